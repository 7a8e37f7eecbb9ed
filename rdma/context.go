// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors the control methods return, for errors.Is.
var (
	// ErrNotSupported: the device's driver has no MigrOS methods (Debian's
	// stock rdma_rxe, or not an rxe device), or the QP type is not RC.
	ErrNotSupported = errors.New("MigrOS control interface not supported")
	// ErrPermission: the caller lacks CAP_SYS_ADMIN.
	ErrPermission = errors.New("permission denied (CAP_SYS_ADMIN needed)")
	// ErrNoObject: no QP has that handle in the context.
	ErrNoObject = errors.New("no such QP in the context")
	// ErrState: the QP is not in a state that allows the call (for
	// example resuming a QP that is not Stopped, or stopping a Paused one).
	ErrState = errors.New("QP is in the wrong migration state")
	// ErrIDTaken: another object on the device already has the ID.
	ErrIDTaken = errors.New("ID already taken on this device")
	// ErrIDRange: the device never gives out that ID.
	ErrIDRange = errors.New("ID out of the device's range")
)

// Error is a failed control call.
type Error struct {
	Op    string
	Path  string
	Errno syscall.Errno
}

func (e *Error) Error() string {
	return fmt.Sprintf("rdma %s on %s: %v", e.Op, e.Path, e.Unwrap())
}

// Unwrap maps the errno to one of the Err values when it has a meaning of
// its own, and to the errno otherwise.
func (e *Error) Unwrap() error {
	switch e.Errno {
	case unix.EPROTONOSUPPORT, unix.EOPNOTSUPP:
		return fmt.Errorf("%w: %w", ErrNotSupported, e.Errno)
	case unix.EPERM, unix.EACCES:
		return fmt.Errorf("%w: %w", ErrPermission, e.Errno)
	case unix.ENOENT:
		return fmt.Errorf("%w: %w", ErrNoObject, e.Errno)
	case unix.EINVAL, unix.EBUSY:
		return fmt.Errorf("%w: %w", ErrState, e.Errno)
	}
	return e.Errno
}

// Context is a uverbs file of an rxe device: one of a process' RDMA
// contexts.
type Context struct {
	file *os.File
	// Path is the device file (/dev/infiniband/uverbsN).
	Path string
	// FD is the file's descriptor number in its process.
	FD int
}

// Close releases the context (the process keeps its own descriptor).
func (c *Context) Close() error { return c.file.Close() }

// OpenPID returns the uverbs contexts of process pid, as descriptors of
// this process obtained with pidfd_getfd. It needs ptrace access to pid.
func OpenPID(pid int) ([]*Context, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("rdma: process %d: %w", pid, err)
	}
	var fds []int
	paths := map[int]string{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "/dev/infiniband/uverbs") {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds = append(fds, fd)
		paths[fd] = target
	}
	if len(fds) == 0 {
		return nil, nil
	}
	sort.Ints(fds)
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("rdma: pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	var ctxs []*Context
	for _, fd := range fds {
		nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			for _, c := range ctxs {
				c.Close()
			}
			return nil, fmt.Errorf("rdma: pidfd_getfd %d of process %d: %w", fd, pid, err)
		}
		ctxs = append(ctxs, &Context{file: os.NewFile(uintptr(nfd), paths[fd]), Path: paths[fd], FD: fd})
	}
	return ctxs, nil
}

// call runs one method. The buffers that attributes point to are pinned
// while the kernel reads or writes them.
func (c *Context) call(op string, method uint16, attrs []attr, bufs ...[]byte) error {
	return c.ioctl(op, objMig, method, attrs, bufs...)
}

// ioctl runs one method of any object.
func (c *Context) ioctl(op string, object, method uint16, attrs []attr, bufs ...[]byte) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	for _, o := range bufs {
		if len(o) > 0 {
			pin.Pin(&o[0])
		}
	}
	buf := encodeCall(object, method, attrs)
	pin.Pin(&buf[0])
	raw, err := c.file.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	err = raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, verbsIoctl, uintptr(unsafe.Pointer(&buf[0])))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return &Error{Op: op, Path: c.Path, Errno: errno}
	}
	return nil
}

// addrOf is the address of b's first byte, for the kernel.
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// outAttr points attribute id at b.
func outAttr(id uint16, b []byte) attr {
	return attr{id: id, len: uint16(len(b)), data: addrOf(b)}
}

// inAttr passes b as input attribute id: inline if it fits in 8 bytes, as
// the kernel expects, else by pointer.
func inAttr(id uint16, b []byte) attr {
	if len(b) > 8 {
		return outAttr(id, b)
	}
	var v [8]byte
	copy(v[:], b)
	return attr{id: id, len: uint16(len(b)), data: binary.LittleEndian.Uint64(v[:])}
}

// invokeWrite runs a classic verbs command (ib_user_verbs.h) through the
// ioctl interface: in is the command without its header, out the response.
func (c *Context) invokeWrite(op string, cmd uint32, in, out []byte) error {
	attrs := []attr{
		{id: attrWriteCmd, len: 8, data: uint64(cmd)},
		inAttr(attrCoreIn, in),
		outAttr(attrCoreOut, out),
	}
	return c.ioctl(op, objDevice, methodInvokeWrite, attrs, in, out)
}

// OpenDevice opens an rxe device file (/dev/infiniband/uverbsN) with a
// context of this process' own, for calls about the device rather than a
// process, such as CheckIDs.
func OpenDevice(path string) (*Context, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("rdma: %w", err)
	}
	c := &Context{file: f, Path: path, FD: -1}
	// struct ib_uverbs_get_context: the response pointer, unused here;
	// struct ib_uverbs_get_context_resp: async_fd, num_comp_vectors.
	in, out := make([]byte, 8), make([]byte, 8)
	if err := c.invokeWrite("get context", cmdGetContext, in, out); err != nil {
		f.Close()
		return nil, err
	}
	unix.Close(int(binary.LittleEndian.Uint32(out)))
	return c, nil
}

// stopResume stops or resumes one QP (qp != nil) or the whole context.
func (c *Context) stopResume(op string, method uint16, qp *uint32) (int, error) {
	count := make([]byte, 4)
	attrs := []attr{outAttr(attrCount, count)}
	if qp != nil {
		attrs = append(attrs, attr{id: attrQP, data: uint64(*qp)})
	}
	if err := c.call(op, method, attrs, count); err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint32(count)), nil
}

// Stop stops every RC QP of the context and returns how many.
func (c *Context) Stop() (int, error) { return c.stopResume("stop", methodStop, nil) }

// StopQP stops the QP with uverbs handle h.
func (c *Context) StopQP(h uint32) error {
	_, err := c.stopResume("stop", methodStop, &h)
	return err
}

// Resume resumes every Stopped QP of the context: each sends RESUME to its
// peer until acknowledged. It returns how many it resumed.
func (c *Context) Resume() (int, error) { return c.stopResume("resume", methodResume, nil) }

// ResumeQP resumes the Stopped QP with uverbs handle h.
func (c *Context) ResumeQP(h uint32) error {
	_, err := c.stopResume("resume", methodResume, &h)
	return err
}

// QPs lists the RC, UC and UD QPs of the context.
func (c *Context) QPs() ([]QPRef, error) {
	for capacity := 64; ; capacity *= 4 {
		list := make([]byte, capacity*qpRefSize)
		count := make([]byte, 4)
		if err := c.call("list", methodListQPs, []attr{outAttr(attrQPList, list), outAttr(attrCount, count)}, list, count); err != nil {
			return nil, err
		}
		n := int(binary.LittleEndian.Uint32(count))
		if n <= capacity {
			return decodeQPRefs(list, n), nil
		}
	}
}

// QueryQP reports the migration state and PSNs of the QP with handle h.
func (c *Context) QueryQP(h uint32) (QPInfo, error) {
	out := make([]byte, qpInfoSize)
	if err := c.call("query", methodQueryQP, []attr{{id: attrQP, data: uint64(h)}, outAttr(attrQPInfo, out)}, out); err != nil {
		return QPInfo{}, err
	}
	info := decodeQPInfo(out)
	info.Handle = h
	return info, nil
}

// AllowHints lets the creates of the context carry ID hints (ID.Hint),
// or no longer. A restore allows them while it recreates a process'
// objects: the creates run in the process, which may lack the
// CAP_SYS_ADMIN this call needs (kernel patch 0017).
func (c *Context) AllowHints(allow bool) error {
	var v [4]byte
	if allow {
		v[0] = 1
	}
	return c.call("allow ID hints", methodAllowHints, []attr{inAttr(attrAllow, v[:])}, v[:])
}

// CheckIDs reports for each of ids whether it is free on the context's
// device: nil, or an error wrapping ErrIDTaken or ErrIDRange.
func (c *Context) CheckIDs(ids []ID) ([]error, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	in := encodeIDs(ids)
	status := make([]byte, 4*len(ids))
	if err := c.call("check IDs", methodCheck, []attr{inAttr(attrIDs, in), outAttr(attrStatus, status)}, in, status); err != nil {
		return nil, err
	}
	return decodeIDStatus(ids, status), nil
}

func decodeIDStatus(ids []ID, status []byte) []error {
	errs := make([]error, len(ids))
	for i, id := range ids {
		switch e := syscall.Errno(binary.LittleEndian.Uint32(status[4*i:])); e {
		case 0:
		case unix.EBUSY:
			errs[i] = fmt.Errorf("%v: %w", id, ErrIDTaken)
		case unix.ERANGE:
			errs[i] = fmt.Errorf("%v: %w", id, ErrIDRange)
		default:
			errs[i] = fmt.Errorf("%v: %w", id, e)
		}
	}
	return errs
}

// FromFile wraps an open uverbs file that some process has as descriptor
// fd (for example one CRIU passed to its plugin).
func FromFile(f *os.File, fd int) *Context {
	return &Context{file: f, Path: f.Name(), FD: fd}
}
