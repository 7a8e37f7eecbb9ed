// SPDX-License-Identifier: Apache-2.0

// Package rdmadev finds a host's RDMA device nodes (/dev/infiniband:
// uverbsN, one per RDMA device, and rdma_cm) and describes them as a CDI
// spec, so that container engines can hand them to containers by name
// (migros.io/rdma=rxe0, migros.io/rdma=all).
package rdmadev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	cdi "tags.cncf.io/container-device-interface/specs-go"
)

// Dir holds the RDMA device nodes.
const Dir = "/dev/infiniband"

// CDIKind is the CDI vendor/class of MigrOS' RDMA devices.
const CDIKind = "migros.io/rdma"

// Node is an RDMA character device of the host.
type Node struct {
	Path         string
	Major, Minor int64
	// IBDev is the RDMA device a uverbs node belongs to ("rxe0"); empty
	// for nodes that serve every device (rdma_cm).
	IBDev string
}

// Host is a host's device and sysfs roots; the zero value is the real
// host ("/").
type Host struct{ Root string }

func (h Host) path(p string) string { return filepath.Join(h.root(), p) }

func (h Host) root() string {
	if h.Root == "" {
		return "/"
	}
	return h.Root
}

// Nodes lists the character devices in /dev/infiniband, uverbs nodes with
// their RDMA device, sorted by path. A host without RDMA has none (no
// error).
func (h Host) Nodes() ([]Node, error) {
	ents, err := os.ReadDir(h.path(Dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var nodes []Node
	for _, e := range ents {
		var st unix.Stat_t
		if err := unix.Stat(h.path(filepath.Join(Dir, e.Name())), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
			continue
		}
		n := Node{Path: filepath.Join(Dir, e.Name()), Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev))}
		if strings.HasPrefix(e.Name(), "uverbs") {
			b, err := os.ReadFile(h.path(filepath.Join("/sys/class/infiniband_verbs", e.Name(), "ibdev")))
			if err != nil {
				return nil, fmt.Errorf("RDMA device of %s: %w", n.Path, err)
			}
			n.IBDev = strings.TrimSpace(string(b))
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Path < nodes[j].Path })
	return nodes, nil
}

// CDISpec describes nodes as CDI devices of kind CDIKind: one per RDMA
// device, named after it, with its uverbs node; "all" with every uverbs
// node. Each also gets the nodes that serve every device (rdma_cm).
// Device numbers are left to the engine, which reads them from the node
// when it injects it.
func CDISpec(nodes []Node) (*cdi.Spec, error) {
	spec := &cdi.Spec{Kind: CDIKind}
	var all cdi.ContainerEdits
	for _, n := range nodes {
		dn := &cdi.DeviceNode{Path: n.Path, Type: "c"}
		if n.IBDev == "" {
			spec.ContainerEdits.DeviceNodes = append(spec.ContainerEdits.DeviceNodes, dn)
			continue
		}
		if n.IBDev == "all" {
			return nil, fmt.Errorf("RDMA device %s: its name is the CDI name of all devices", n.Path)
		}
		spec.Devices = append(spec.Devices, cdi.Device{Name: n.IBDev,
			ContainerEdits: cdi.ContainerEdits{DeviceNodes: []*cdi.DeviceNode{dn}}})
		all.DeviceNodes = append(all.DeviceNodes, dn)
	}
	if len(spec.Devices) == 0 {
		return nil, errors.New("this host has no RDMA device (no uverbs node in " + Dir + ")")
	}
	spec.Devices = append(spec.Devices, cdi.Device{Name: "all", ContainerEdits: all})
	v, err := cdi.MinimumRequiredVersion(spec)
	if err != nil {
		return nil, err
	}
	spec.Version = v
	return spec, nil
}
