// SPDX-License-Identifier: Apache-2.0

// Package criu does the RDMA part of a CRIU checkpoint and restore, which
// MigrOS' CRIU plugin (plugin/migros_criu.c) hands to `migros-criu criu-dump`
// and friends while CRIU holds the process.
package criu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/image"
)

const kcmpFile = 0 // KCMP_FILE

// sameFile says whether fd of this process and fd tfd of process pid are
// the same open file.
func sameFile(fd int, pid, tfd int) bool {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(pid), kcmpFile,
		uintptr(fd), uintptr(tfd), 0)
	return errno == 0 && r == 0
}

// Owner finds the process that has the open file f (a uverbs file CRIU
// passed us) and its descriptor number there. CRIU, our parent, holds the
// file too and is not its owner.
func Owner(f *os.File) (pid, fd int, err error) {
	procs, err := filepath.Glob("/proc/[0-9]*/fd")
	if err != nil {
		return 0, 0, err
	}
	for _, dir := range procs {
		p, _ := strconv.Atoi(strings.Split(dir, "/")[2])
		if p == os.Getpid() || p == os.Getppid() {
			continue
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			target, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || target != f.Name() {
				continue
			}
			n, _ := strconv.Atoi(e.Name())
			if sameFile(int(f.Fd()), p, n) {
				return p, n, nil
			}
		}
	}
	return 0, 0, fmt.Errorf("criu: no process has %s (this open of it) any more", f.Name())
}

// mapping is a line of /proc/PID/maps.
type mapping struct {
	start, end, offset uint64
	path               string
}

func mappings(pid int) ([]mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []mapping
	s := bufio.NewScanner(f)
	for s.Scan() {
		var m mapping
		var perms, dev string
		var inode uint64
		n, _ := fmt.Sscanf(s.Text(), "%x-%x %s %x %s %d %s", &m.start, &m.end, &perms, &m.offset, &dev, &inode, &m.path)
		if n >= 6 {
			ms = append(ms, m)
		}
	}
	return ms, s.Err()
}

// eventFDs lists the process' [infinibandevent] descriptors (its async
// event file and completion channels).
func eventFDs(pid int) []int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var fds []int
	for _, e := range ents {
		if t, _ := os.Readlink(filepath.Join(dir, e.Name())); t == "anon_inode:[infinibandevent]" {
			n, _ := strconv.Atoi(e.Name())
			fds = append(fds, n)
		}
	}
	return fds
}

// readRing copies a queue buffer out of the process: it is a mapping of
// the uverbs file at the queue's mmap offset.
func readRing(pid int, mem *os.File, ms []mapping, device, kind string, handle uint32, q rdma.Queue) (image.Ring, error) {
	for _, m := range ms {
		if m.path == device && m.offset == q.Offset && m.end-m.start >= q.BufSize {
			data := make([]byte, q.BufSize)
			if _, err := mem.ReadAt(data, int64(m.start)); err != nil {
				return image.Ring{}, fmt.Errorf("criu: reading %s of handle %d in process %d: %w", kind, handle, pid, err)
			}
			return image.Ring{Kind: kind, Handle: handle, VA: m.start, Data: data}, nil
		}
	}
	return image.Ring{}, fmt.Errorf("criu: process %d does not map the %s of handle %d (offset %#x of %s)",
		pid, kind, handle, q.Offset, device)
}

// Dump records the uverbs file f, which process pid has as descriptor fd:
// it stops the context's QPs, dumps its objects and copies its rings out
// of the process. The process must be frozen.
func Dump(f *os.File, pid, fd int) (*image.Context, error) {
	// Before anything is stopped: the GIDs a UD QP restored elsewhere
	// announces its move from.
	c := rdma.FromFile(f, fd)
	gids, err := c.GIDs()
	if err != nil {
		return nil, err
	}
	if _, err := c.Stop(); err != nil {
		return nil, err
	}
	objs, err := c.Dump()
	if err != nil {
		return nil, err
	}
	ms, err := mappings(pid)
	if err != nil {
		return nil, fmt.Errorf("criu: %w", err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Errorf("criu: %w", err)
	}
	defer mem.Close()
	img := &image.Context{PID: pid, FD: fd, Device: f.Name(), EventFDs: eventFDs(pid), Objects: objs, GIDs: gids}
	if v, err := os.ReadFile("/sys/module/rdma_rxe/parameters/migros_version"); err == nil {
		img.MigVersion = strings.TrimSpace(string(v))
	}
	add := func(kind string, h uint32, q rdma.Queue) error {
		if q.BufSize == 0 {
			return nil
		}
		r, err := readRing(pid, mem, ms, f.Name(), kind, h, q)
		img.Rings = append(img.Rings, r)
		return err
	}
	for _, o := range objs.CQs {
		if err := add("cq", o.Handle, o.Queue); err != nil {
			return nil, err
		}
	}
	for _, o := range objs.SRQs {
		if err := add("srq", o.Handle, o.Queue); err != nil {
			return nil, err
		}
	}
	for _, o := range objs.QPs {
		if err := errors.Join(add("sq", o.Handle, o.SQ), add("rq", o.Handle, o.RQ)); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// WriteImage writes img as CRIU file id's RDMA image in the images
// directory dir.
func WriteImage(dir *os.File, id int, img *image.Context) error {
	b, err := image.Encode(img)
	if err != nil {
		return err
	}
	fd, err := unix.Openat(int(dir.Fd()), image.FileName(id), unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("criu: creating %s: %w", image.FileName(id), err)
	}
	out := os.NewFile(uintptr(fd), image.FileName(id))
	if _, err := out.Write(b); err != nil {
		out.Close()
		return fmt.Errorf("criu: writing %s: %w", image.FileName(id), err)
	}
	return out.Close()
}
