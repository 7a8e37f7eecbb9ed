// SPDX-License-Identifier: Apache-2.0

package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma/verbs"
)

// Executor runs system calls in a task that CRIU holds stopped: the CRIU
// plugin serves them over a SOCK_SEQPACKET socket. A request is the call
// number, six arguments and the thread to run it in (0: the task's main
// thread), a reply the raw return value (a negative errno on failure), all
// little-endian 64-bit words. Call number ^0 asks for a table of calls in
// the task's memory instead (see Batch).
type Executor struct{ conn io.ReadWriter }

// NewExecutor talks to the plugin over conn.
func NewExecutor(conn io.ReadWriter) *Executor { return &Executor{conn: conn} }

// ErrExecutor is a failure of the channel to the task, not of a call.
var ErrExecutor = errors.New("criu: system call executor")

// Syscall runs system call nr with args in the task's main thread.
func (e *Executor) Syscall(nr uintptr, args ...uint64) (uint64, error) {
	return e.SyscallIn(0, nr, args...)
}

// SyscallIn runs system call nr with args in thread tid of the task.
func (e *Executor) SyscallIn(tid int, nr uintptr, args ...uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("%w: %d arguments", ErrExecutor, len(args))
	}
	return result(e.request(uint64(nr), args, tid))
}

// result is a system call's raw return value as a value or an errno.
func result(r uint64, err error) (uint64, error) {
	if err != nil {
		return 0, err
	}
	if v := int64(r); v < 0 && v >= -4095 {
		return 0, syscall.Errno(-v)
	}
	return r, nil
}

// execBatch is the request for a table of calls (see Batch).
const execBatch = ^uint64(0)

// Batch runs, in the task's main thread and with one request, the n
// system calls of the table at address table in the task: 64-byte entries
// of the call number, six arguments and a word for the result, which the
// call leaves there. The run stops after the first call that fails (a
// result from -4095 to -1). It returns how many calls ran.
func (e *Executor) Batch(table uint64, n int) (int, error) {
	r, err := e.request(execBatch, []uint64{table, uint64(n)}, 0)
	if err != nil {
		return 0, err
	}
	if r > uint64(n) {
		return 0, fmt.Errorf("%w: a batch of %d ran %d", ErrExecutor, n, int64(r))
	}
	return int(r), nil
}

func (e *Executor) request(nr uint64, args []uint64, tid int) (uint64, error) {
	var req [64]byte
	binary.LittleEndian.PutUint64(req[0:], nr)
	for i, a := range args {
		binary.LittleEndian.PutUint64(req[8+8*i:], a)
	}
	binary.LittleEndian.PutUint64(req[56:], uint64(tid))
	if _, err := e.conn.Write(req[:]); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrExecutor, err)
	}
	var resp [8]byte
	if n, err := e.conn.Read(resp[:]); err != nil || n != len(resp) {
		return 0, fmt.Errorf("%w: reply of %d bytes: %v", ErrExecutor, n, err)
	}
	return binary.LittleEndian.Uint64(resp[:]), nil
}

// task is a restored process that CRIU holds stopped: calls run in it
// through the executor, memory is read and written through /proc.
type task struct {
	pid   int
	exec  *Executor
	mem   *os.File
	pidfd int
}

func openTask(pid int, e *Executor) (*task, error) {
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("criu: %w", err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("criu: pidfd of %d: %w", pid, err)
	}
	return &task{pid: pid, exec: e, mem: mem, pidfd: pidfd}, nil
}

func (t *task) close() {
	t.mem.Close()
	unix.Close(t.pidfd)
}

// call runs a system call in the task; op names it in errors.
func (t *task) call(op string, nr uintptr, args ...uint64) (uint64, error) {
	r, err := t.exec.Syscall(nr, args...)
	if err != nil {
		return 0, fmt.Errorf("criu: %s in process %d: %w", op, t.pid, err)
	}
	return r, nil
}

// Call is one system call of a batch.
type Call struct {
	Op   string // what it does, for errors
	NR   uintptr
	Args [6]uint64
}

// batch runs calls in the task with one round trip per arena-full, their
// table in a; it stops at the first that fails and returns its error. The
// results of those that ran are returned in order.
func (t *task) batch(a *remoteArena, calls []Call) ([]uint64, error) {
	const entry = 64
	results := make([]uint64, 0, len(calls))
	for len(calls) > 0 {
		n := min(len(calls), a.size/entry)
		table := make([]byte, n*entry)
		le := binary.LittleEndian
		for i, c := range calls[:n] {
			le.PutUint64(table[i*entry:], uint64(c.NR))
			for j, v := range c.Args {
				le.PutUint64(table[i*entry+8+8*j:], v)
			}
		}
		if err := a.WriteAt(table, 0); err != nil {
			return results, err
		}
		ran, err := t.exec.Batch(a.addr, n)
		if err != nil {
			return results, fmt.Errorf("criu: %s in process %d: %w", calls[0].Op, t.pid, err)
		}
		if err := a.ReadAt(table[:ran*entry], 0); err != nil {
			return results, err
		}
		for i := 0; i < ran; i++ {
			r, err := result(le.Uint64(table[i*entry+56:]), nil)
			if err != nil {
				return results, fmt.Errorf("criu: %s in process %d: %w", calls[i].Op, t.pid, err)
			}
			results = append(results, r)
		}
		if ran != n {
			return results, fmt.Errorf("criu: a batch in process %d stopped after %d of %d calls without an error", t.pid, ran, n)
		}
		calls = calls[n:]
	}
	return results, nil
}

// file gets a copy of the task's descriptor fd.
func (t *task) file(fd int, name string) (*os.File, error) {
	l, err := unix.PidfdGetfd(t.pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("criu: fd %d of process %d: %w", fd, t.pid, err)
	}
	return os.NewFile(uintptr(l), name), nil
}

func (t *task) read(addr uint64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := t.mem.ReadAt(b, int64(addr)); err != nil {
		return nil, fmt.Errorf("criu: reading %d bytes at %#x of process %d: %w", n, addr, t.pid, err)
	}
	return b, nil
}

func (t *task) write(addr uint64, b []byte) error {
	if _, err := t.mem.WriteAt(b, int64(addr)); err != nil {
		return fmt.Errorf("criu: writing %d bytes at %#x of process %d: %w", len(b), addr, t.pid, err)
	}
	return nil
}

// iovMax is how many pieces process_vm_readv and _writev take at once.
const iovMax = 1024

// memWrite is data for address addr of the task.
type memWrite struct {
	addr uint64
	data []byte
}

// writeAll writes each w.data at w.addr, with as few system calls as
// process_vm_writev allows.
func (t *task) writeAll(ws []memWrite) error {
	for len(ws) > 0 {
		n := min(len(ws), iovMax)
		local := make([]unix.Iovec, 0, n)
		remote := make([]unix.RemoteIovec, 0, n)
		total := 0
		for _, w := range ws[:n] {
			if len(w.data) == 0 {
				continue
			}
			iov := unix.Iovec{Base: &w.data[0]}
			iov.SetLen(len(w.data))
			local = append(local, iov)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(w.addr), Len: len(w.data)})
			total += len(w.data)
		}
		got, err := unix.ProcessVMWritev(t.pid, local, remote, 0)
		if err != nil || got != total {
			return fmt.Errorf("criu: writing %d bytes to %d places of process %d: wrote %d: %v", total, len(local), t.pid, got, err)
		}
		ws = ws[n:]
	}
	return nil
}

// readAll reads n bytes at each of addrs, with as few system calls as
// process_vm_readv allows.
func (t *task) readAll(addrs []uint64, n int) ([][]byte, error) {
	out := make([][]byte, len(addrs))
	buf := make([]byte, len(addrs)*n)
	for i := range out {
		out[i] = buf[i*n : (i+1)*n]
	}
	for done := 0; done < len(addrs); {
		k := min(len(addrs)-done, iovMax)
		local := make([]unix.Iovec, k)
		remote := make([]unix.RemoteIovec, k)
		for i := range k {
			local[i] = unix.Iovec{Base: &out[done+i][0]}
			local[i].SetLen(n)
			remote[i] = unix.RemoteIovec{Base: uintptr(addrs[done+i]), Len: n}
		}
		got, err := unix.ProcessVMReadv(t.pid, local, remote, 0)
		if err != nil || got != k*n {
			return nil, fmt.Errorf("criu: reading %d bytes at %d places of process %d: read %d: %v", k*n, k, t.pid, got, err)
		}
		done += k
	}
	return out, nil
}

// remoteArena is a verbs.Arena in the task: scratch memory mapped there,
// in which commands are laid out and ioctls run.
type remoteArena struct {
	t    *task
	addr uint64
	size int
}

func newRemoteArena(t *task, size int) (*remoteArena, error) {
	addr, err := t.call("mmap of scratch memory", unix.SYS_MMAP, 0, uint64(size),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return nil, err
	}
	return &remoteArena{t: t, addr: addr, size: size}, nil
}

func (a *remoteArena) Addr() uint64 { return a.addr }
func (a *remoteArena) Size() int    { return a.size }

func (a *remoteArena) check(n, off int) error {
	if off < 0 || off+n > a.size {
		return fmt.Errorf("criu: %d bytes at %d outside the arena", n, off)
	}
	return nil
}

func (a *remoteArena) WriteAt(b []byte, off int) error {
	if err := a.check(len(b), off); err != nil {
		return err
	}
	return a.t.write(a.addr+uint64(off), b)
}

func (a *remoteArena) ReadAt(b []byte, off int) error {
	if err := a.check(len(b), off); err != nil {
		return err
	}
	r, err := a.t.read(a.addr+uint64(off), len(b))
	copy(b, r)
	return err
}

func (a *remoteArena) Ioctl(fd int, req uint64, off int) (uint64, syscall.Errno) {
	r, err := a.t.exec.Syscall(unix.SYS_IOCTL, uint64(fd), req, a.addr+uint64(off))
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return 0, errno
	case err != nil:
		return 0, unix.EIO // the executor is gone; the next call reports it
	}
	return r, 0
}

// IoctlBatch runs the calls with as few requests as the arena allows.
func (a *remoteArena) IoctlBatch(fd int, calls []verbs.IoctlAt, scratch int) (int, syscall.Errno, error) {
	if scratch < 0 || scratch+verbs.BatchEntrySize*len(calls) > a.size {
		return 0, 0, fmt.Errorf("criu: no arena room for a batch of %d", len(calls))
	}
	le := binary.LittleEndian
	table := make([]byte, verbs.BatchEntrySize*len(calls))
	for i, c := range calls {
		e := table[i*verbs.BatchEntrySize:]
		le.PutUint64(e, unix.SYS_IOCTL)
		le.PutUint64(e[8:], uint64(fd))
		le.PutUint64(e[16:], c.Req)
		le.PutUint64(e[24:], a.addr+uint64(c.Off))
	}
	if err := a.WriteAt(table, scratch); err != nil {
		return 0, 0, err
	}
	ran, err := a.t.exec.Batch(a.addr+uint64(scratch), len(calls))
	if err != nil || ran == 0 {
		return ran, 0, err
	}
	last := (ran - 1) * verbs.BatchEntrySize
	if err := a.ReadAt(table[last:last+verbs.BatchEntrySize], scratch+last); err != nil {
		return ran, 0, err
	}
	var errno syscall.Errno
	if _, err := result(le.Uint64(table[last+56:]), nil); err != nil {
		errors.As(err, &errno)
	}
	return ran, errno, nil
}

func (a *remoteArena) close() error {
	_, err := a.t.call("munmap of scratch memory", unix.SYS_MUNMAP, a.addr, uint64(a.size))
	return err
}
