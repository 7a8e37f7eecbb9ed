// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma"
)

// Redirty marks every page of the memory that the process tree of pid
// registered for RDMA as written, reading each page and writing it back
// in place, and returns how many bytes that was. A dump on top of a
// pre-dump (pre-copy) takes only the pages written since, as the
// kernel's soft-dirty bits tell; the NIC writes registered memory
// without setting them (pinned small pages keep theirs, pinned huge
// pages lose them at each pre-dump), so registered memory must be marked
// again before the final dump. The processes must be frozen; their QPs
// are Stopped first, so that no write from a peer lands while a page is
// rewritten (the dump finds them Stopped; on an error, Resume them).
// Memory registered without local write access, which the NIC cannot
// write, is left alone.
func Redirty(pid int) (int64, error) {
	var total int64
	buf := make([]byte, 1<<20)
	err := eachContext(pid, func(p int, c *rdma.Context) error {
		_, err := c.Stop()
		var d *rdma.ContextDump
		if err == nil {
			d, err = c.Dump()
		}
		if err != nil {
			return fmt.Errorf("RDMA objects of process %d: %w", p, err)
		}
		for _, m := range d.MRs {
			if m.Access&accessLocalWrite == 0 {
				continue
			}
			n, err := rewrite(p, m.Start, m.Length, buf)
			total += n
			if err != nil {
				return fmt.Errorf("process %d, MR %#x (%d bytes at %#x): %w", p, m.LKey, m.Length, m.Start, err)
			}
		}
		return nil
	})
	return total, err
}

// accessLocalWrite is IBV_ACCESS_LOCAL_WRITE, which every access that
// lets the NIC write an MR requires.
const accessLocalWrite = 1

// rewrite reads length bytes at addr of process pid and writes them back.
func rewrite(pid int, addr, length uint64, buf []byte) (int64, error) {
	var done int64
	for off := uint64(0); off < length; {
		n := min(uint64(len(buf)), length-off)
		local := []unix.Iovec{{Base: &buf[0], Len: n}}
		remote := []unix.RemoteIovec{{Base: uintptr(addr + off), Len: int(n)}}
		r, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			return done, fmt.Errorf("reading: %w", err)
		}
		local[0].Len = uint64(r)
		remote[0].Len = r
		if _, err := unix.ProcessVMWritev(pid, local, remote, 0); err != nil {
			return done, fmt.Errorf("writing back: %w", err)
		}
		off += uint64(r)
		done += int64(r)
	}
	return done, nil
}
