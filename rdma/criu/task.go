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
)

// Executor runs system calls in a task that CRIU holds stopped: the CRIU
// plugin serves them over a SOCK_SEQPACKET socket. A request is the call
// number, six arguments and the thread to run it in (0: the task's main
// thread), a reply the raw return value (a negative errno on failure), all
// little-endian 64-bit words.
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
	var req [64]byte
	binary.LittleEndian.PutUint64(req[0:], uint64(nr))
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
	r := int64(binary.LittleEndian.Uint64(resp[:]))
	if r < 0 && r >= -4095 {
		return 0, syscall.Errno(-r)
	}
	return uint64(r), nil
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

func (a *remoteArena) close() error {
	_, err := a.t.call("munmap of scratch memory", unix.SYS_MUNMAP, a.addr, uint64(a.size))
	return err
}
