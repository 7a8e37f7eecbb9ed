// SPDX-License-Identifier: Apache-2.0

// Package checkpoint checkpoints a process that uses RDMA: stock CRIU dumps
// the process, MigrOS' CRIU plugin hands it the uverbs files, and their
// RDMA state goes into rdma-<id>.img next to CRIU's images.
package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
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

// Options of a checkpoint.
type Options struct {
	PID          int
	ImagesDir    string
	LeaveRunning bool   // keep the process running (its QPs resume in place)
	PluginDir    string // holds migros_criu.so; CRIU loads every plugin there
	MigrosBin    string // the migros binary the plugin runs
	CRIU         string // criu binary, default "criu"
}

// ErrUnsupported: the process has something MigrOS cannot checkpoint; it
// was refused before anything was frozen.
var ErrUnsupported = errors.New("not supported by MigrOS checkpoint")

// Refusals checks, before anything is frozen, for what MigrOS cannot
// checkpoint in process pid and its descendants: the RDMA connection
// manager, and QPs that a restore could not bring back (of a type other
// than RC, UC and UD, or in an error state), which would be lost with the
// process.
func Refusals(pid int) error {
	var errs []error
	for _, p := range tree(pid) {
		dir := fmt.Sprintf("/proc/%d/fd", p)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			t, _ := os.Readlink(filepath.Join(dir, e.Name()))
			if t == "/dev/infiniband/rdma_cm" {
				errs = append(errs, fmt.Errorf("%w: process %d has the RDMA connection manager open (fd %s); "+
					"only ibverbs connections set up by the application are supported", ErrUnsupported, p, e.Name()))
			}
		}
		if err := restorableQPs(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// restorableQPs checks that a restore would take every QP of process p.
func restorableQPs(p int) error {
	ctxs, err := rdma.OpenPID(p)
	if err != nil {
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d", p)); errors.Is(serr, fs.ErrNotExist) {
			return nil // exited since the tree was listed: nothing to lose
		}
		return fmt.Errorf("checking the RDMA state of process %d: %w", p, err)
	}
	var errs []error
	for _, c := range ctxs {
		d := &rdma.ContextDump{Path: c.Path, FD: c.FD}
		hs, err := c.Handles(rdma.ObjQP)
		for _, h := range hs {
			if err != nil {
				break
			}
			var q rdma.QPDump
			q, _, err = c.DumpQP(h)
			d.QPs = append(d.QPs, rdma.QPObject{Handle: h, QPDump: q})
		}
		c.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("checking the RDMA state of process %d: %w", p, err))
			continue
		}
		if err := criu.Restorable(&image.Context{Objects: d}); err != nil {
			errs = append(errs, fmt.Errorf("%w: process %d fd %d: %w", ErrUnsupported, p, c.FD, err))
		}
	}
	return errors.Join(errs...)
}

// tree is pid and its descendants.
func tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", out[i]))
		for _, t := range tasks {
			b, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// Run checkpoints the process tree of o.PID into o.ImagesDir. If the
// process is to keep running, or if the checkpoint fails while it still
// runs, its QPs are resumed in place, so its peers carry on with it.
func Run(ctx context.Context, o Options) error {
	if err := Refusals(o.PID); err != nil {
		return err
	}
	if o.CRIU == "" {
		o.CRIU = "criu"
	}
	if err := os.MkdirAll(o.ImagesDir, 0o700); err != nil {
		return err
	}
	// RDMA applications commonly keep the TCP connection over which they
	// exchanged QP numbers: CRIU checkpoints it with TCP repair.
	args := []string{"dump", "--tree", strconv.Itoa(o.PID), "--images-dir", o.ImagesDir,
		"--libdir", o.PluginDir, "--log-file", "dump.log", "-v4", "--tcp-established"}
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	cmd := exec.CommandContext(ctx, o.CRIU, args...)
	cmd.Env = append(os.Environ(), "MIGROS_BIN="+o.MigrosBin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("criu dump of process %d: %w: %s%s", o.PID, err, out.String(), LogErrors(filepath.Join(o.ImagesDir, "dump.log")))
	}
	if err != nil || o.LeaveRunning {
		if rerr := Resume(o.PID); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// Resume resumes the Stopped QPs of every process of the tree of pid that
// still runs.
func Resume(pid int) error {
	var errs []error
	_ = eachContext(pid, func(p int, c *rdma.Context) error {
		if _, err := c.Resume(); err != nil {
			errs = append(errs, fmt.Errorf("resuming process %d: %w", p, err))
		}
		return nil // resume the others all the same
	})
	return errors.Join(errs...)
}

// eachContext calls fn with each RDMA context of each process of the tree
// rooted at pid (processes gone meanwhile, or without RDMA, have none),
// until fn fails; every context is closed after.
func eachContext(pid int, fn func(p int, c *rdma.Context) error) error {
	for _, p := range tree(pid) {
		ctxs, err := rdma.OpenPID(p)
		if err != nil {
			continue
		}
		for _, c := range ctxs {
			if err == nil {
				err = fn(p, c)
			}
			c.Close()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// LogErrors is what a CRIU log at path says went wrong, its error lines,
// ready to follow an error message; "" if it says nothing or cannot be
// read.
func LogErrors(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "Error (") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) == 0 {
		return ""
	}
	return fmt.Sprintf("\ncriu errors (log: %s):\n%s", path, strings.Join(errs, "\n"))
}

// Images reads every RDMA image of a checkpoint directory, by CRIU file
// id.
func Images(dir string) (map[int]*image.Context, error) {
	names, err := filepath.Glob(filepath.Join(dir, "rdma-[0-9]*.img"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	imgs := map[int]*image.Context{}
	for _, n := range names {
		id, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(n), "rdma-"), ".img"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		c, err := image.Decode(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		imgs[id] = c
	}
	return imgs, nil
}

// HeldIDs are the RDMA IDs (QPNs, MR and MW keys, SRQ and AH numbers)
// that process pid and its descendants hold, by uverbs device: what a
// host must have free to take the processes over.
func HeldIDs(pid int) (map[string][]rdma.ID, error) {
	held := map[string][]rdma.ID{}
	err := eachContext(pid, func(p int, c *rdma.Context) error {
		d, err := c.Dump()
		if err != nil {
			return fmt.Errorf("RDMA objects of process %d: %w", p, err)
		}
		held[d.Path] = append(held[d.Path], d.IDs()...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return held, nil
}
