// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/criu"
	"github.com/migros/migros/rdma/image"
)

// RestoreOptions of a restore.
type RestoreOptions struct {
	ImagesDir string
	PluginDir string // holds migros_criu.so
	MigrosBin string // the migros binary the plugin runs
	CRIU      string // criu binary, default "criu"
}

// ErrPreflight: the host cannot take the checkpoint; nothing was started.
var ErrPreflight = errors.New("restore pre-flight")

// Preflight checks, before CRIU starts, that this host can rebuild the
// RDMA state of the images: restore supports every object, each device
// exists and runs MigrOS' rdma_rxe, and every QPN, SRQ and AH number and MR and MW key is free on it.
func Preflight(imgs map[int]*image.Context) error {
	var errs []error
	byDevice := map[string][]rdma.ID{}
	for _, c := range imgs {
		if err := criu.Restorable(c); err != nil {
			errs = append(errs, fmt.Errorf("%w: process %d fd %d: %w", ErrPreflight, c.PID, c.FD, err))
		}
		byDevice[c.Device] = append(byDevice[c.Device], c.Objects.IDs()...)
	}
	for _, err := range CheckFree(byDevice) {
		errs = append(errs, fmt.Errorf("%w: %w", ErrPreflight, err))
	}
	return errors.Join(errs...)
}

// CheckFree checks that each device of byDevice exists, runs MigrOS'
// rdma_rxe and has its IDs free; it returns one error per problem, each
// naming its device, devices in order.
func CheckFree(byDevice map[string][]rdma.ID) []error {
	var errs []error
	devices := make([]string, 0, len(byDevice))
	for d := range byDevice {
		devices = append(devices, d)
	}
	sort.Strings(devices)
	for _, d := range devices {
		c, err := rdma.OpenDevice(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("device %s: %w", d, err))
			continue
		}
		res, err := c.CheckIDs(byDevice[d])
		c.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("device %s: %w", d, err))
			continue
		}
		for _, e := range res {
			if e != nil {
				errs = append(errs, fmt.Errorf("device %s: %w", d, e))
			}
		}
	}
	return errs
}

// Restore restores the checkpoint in o.ImagesDir with CRIU; MigrOS' plugin
// rebuilds the RDMA state of each process before it runs, and its QPs
// resume towards their peers. It returns the restored root process.
func Restore(ctx context.Context, o RestoreOptions) (int, error) {
	imgs, err := Images(o.ImagesDir)
	if err != nil {
		return 0, err
	}
	if err := Preflight(imgs); err != nil {
		return 0, err
	}
	if o.CRIU == "" {
		o.CRIU = "criu"
	}
	pidfile := filepath.Join(o.ImagesDir, "restore.pid")
	os.Remove(pidfile)
	args := []string{"restore", "--images-dir", o.ImagesDir, "--libdir", o.PluginDir, "--log-file", "restore.log",
		"-v4", "--tcp-established", "--restore-detached", "--pidfile", pidfile}
	cmd := exec.CommandContext(ctx, o.CRIU, args...)
	cmd.Env = append(os.Environ(), "MIGROS_BIN="+o.MigrosBin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("criu restore: %w: %s%s", err, out.String(), LogErrors(filepath.Join(o.ImagesDir, "restore.log")))
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, fmt.Errorf("criu restore wrote no pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("criu restore pid file: %w", err)
	}
	// CRIU ignores the plugin's verdict; the plugin kills a process whose
	// RDMA state it could not rebuild, so look at what was restored.
	for _, c := range imgs {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", c.PID, c.FD))
		if err != nil || link != c.Device {
			return pid, fmt.Errorf("RDMA restore of process %d failed (fd %d is %q: %v): %s",
				c.PID, c.FD, link, err, out.String())
		}
	}
	return pid, nil
}
