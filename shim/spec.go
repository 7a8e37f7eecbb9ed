// SPDX-License-Identifier: Apache-2.0

package shim

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/migros/migros/runtime/rdmadev"
)

// RDMAAnnotation, set to "true" on a container, asks for the host's RDMA
// devices: the shim adds them, the device cgroup rules that let the
// container use them and an unlimited memlock limit (memory an RDMA
// program registers stays locked).
const RDMAAnnotation = "io.migros.rdma"

// criuConfigAnnotation names the CRIU configuration file runc gives CRIU
// for the container's checkpoints and restores.
const criuConfigAnnotation = "org.criu.config"

// prepareSpec edits the container's spec (the bundle's config.json, which
// runc reads at create) for MigrOS: a container with RDMAAnnotation gets
// the host's RDMA devices (devices lists them), and a container with an
// RDMA device (from the annotation, or named by the engine, e.g. through
// CDI) an unlimited memlock limit, memory its programs register stays
// locked, and MigrOS' CRIU configuration conf, unless its spec names one:
// RDMA programs keep the TCP connection they exchanged QP numbers over,
// which CRIU dumps and restores only when told to, and runc tells it so
// at restore only through that file. A spec that needs none of this is
// left untouched. It says whether the container has an RDMA device.
func prepareSpec(bundle, conf string, devices func() ([]rdmadev.Node, error)) (bool, error) {
	if bundle == "" {
		return false, nil
	}
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("%w: the container's spec: %w", errdefs.ErrInvalidArgument, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return false, fmt.Errorf("%w: the container's spec: %w", errdefs.ErrInvalidArgument, err)
	}
	changed := false
	if v, ok := spec.Annotations[RDMAAnnotation]; ok {
		if v != "true" {
			return false, fmt.Errorf("%w: annotation %s=%q: only \"true\" is known", errdefs.ErrInvalidArgument, RDMAAnnotation, v)
		}
		devs, err := devices()
		if err != nil || len(devs) == 0 {
			return false, fmt.Errorf("%w: the container asks for RDMA (%s) and this host has no RDMA device: %v",
				errdefs.ErrFailedPrecondition, RDMAAnnotation, err)
		}
		addDevices(&spec, devs)
		changed = true
	}
	if !hasRDMA(&spec) {
		return false, nil
	}
	if unlimitMemlock(&spec) {
		changed = true
	}
	if _, set := spec.Annotations[criuConfigAnnotation]; !set {
		if spec.Annotations == nil {
			spec.Annotations = map[string]string{}
		}
		spec.Annotations[criuConfigAnnotation] = conf
		changed = true
	}
	if !changed {
		return true, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return true, err
	}
	out, err := json.Marshal(&spec)
	if err != nil {
		return true, err
	}
	tmp := path + ".migros"
	if err := os.WriteFile(tmp, out, st.Mode().Perm()); err != nil {
		return true, err
	}
	return true, os.Rename(tmp, path)
}

// addDevices gives the container devs (those it lacks) and the cgroup
// rules to use them (all of them).
func addDevices(s *specs.Spec, devs []rdmadev.Node) {
	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	if s.Linux.Resources == nil {
		s.Linux.Resources = &specs.LinuxResources{}
	}
	mode := os.FileMode(0o666)
	var zero uint32
	for _, d := range devs {
		if !hasDevice(s, d.Path) {
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: d.Path, Type: "c",
				Major: d.Major, Minor: d.Minor, FileMode: &mode, UID: &zero, GID: &zero})
		}
		major, minor := d.Major, d.Minor
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true,
			Type: "c", Major: &major, Minor: &minor, Access: "rwm"})
	}
}

// unlimitMemlock lifts the container's memlock limit, and says whether
// that changed its spec.
func unlimitMemlock(s *specs.Spec) bool {
	if s.Process == nil {
		return false
	}
	unlimited := specs.POSIXRlimit{Type: "RLIMIT_MEMLOCK", Hard: math.MaxUint64, Soft: math.MaxUint64}
	for i, r := range s.Process.Rlimits {
		if r.Type == unlimited.Type {
			if r == unlimited {
				return false
			}
			s.Process.Rlimits[i] = unlimited
			return true
		}
	}
	s.Process.Rlimits = append(s.Process.Rlimits, unlimited)
	return true
}

func hasDevice(s *specs.Spec, path string) bool {
	if s.Linux == nil {
		return false
	}
	for _, d := range s.Linux.Devices {
		if d.Path == path {
			return true
		}
	}
	return false
}

// hasRDMA says whether the container gets an RDMA device.
func hasRDMA(s *specs.Spec) bool {
	if s.Linux == nil {
		return false
	}
	for _, d := range s.Linux.Devices {
		if strings.HasPrefix(d.Path, rdmadev.Dir+"/") {
			return true
		}
	}
	return false
}
