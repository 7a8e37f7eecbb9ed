// SPDX-License-Identifier: Apache-2.0

package verbs

import (
	"fmt"
	"syscall"
)

// IoctlAt is one ioctl of a batch: ioctl(fd, Req, arena address + Off).
type IoctlAt struct {
	Req uint64
	Off int
}

// Batcher is an Arena that runs a series of ioctls in one go: a restore
// pays a ptrace round trip per request into the restored process, which
// under emulation costs more than the calls it runs.
type Batcher interface {
	Arena
	// IoctlBatch runs calls in order on fd and stops after the first
	// that fails. It may use the arena from offset scratch on (64 bytes
	// per call). It returns how many ran and the errno of the last one
	// if it failed.
	IoctlBatch(fd int, calls []IoctlAt, scratch int) (int, syscall.Errno, error)
}

// BatchEntrySize is the scratch a Batcher may use per call.
const BatchEntrySize = 64

// Batch queues commands for a Device whose arena is a Batcher and runs
// them when the arena is full or on Flush, in the order queued. A command
// that fails stops the run: Flush returns its error and what was queued
// after it does not run. Each command's done runs, in order, once the
// commands up to it have run.
type Batch struct {
	d     *Device
	arena Batcher
	buf   []byte
	cmds  []queued
}

type queued struct {
	op   func() string
	req  uint64
	off  int
	size int
	done func(region []byte) error
}

// Batch starts a batch of commands on the device.
func (d *Device) Batch() (*Batch, error) {
	b, ok := d.arena.(Batcher)
	if !ok {
		return nil, fmt.Errorf("verbs: the arena of fd %d cannot run batches", d.FD)
	}
	return &Batch{d: d, arena: b}, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// Ioctl queues ioctl(fd, req, p) where p is size bytes of the arena that
// layout fills (in dst, zeroed), given the address base they will be at;
// op names it in errors
// (called only then). done, if not nil, gets them back after the run,
// valid until it returns.
func (b *Batch) Ioctl(op func() string, req uint64, size int, layout func(base uint64, dst []byte), done func(region []byte) error) error {
	need := func(off, n int) int { return align8(off+size) + BatchEntrySize*n }
	off := align8(len(b.buf))
	if need(off, len(b.cmds)+1) > b.arena.Size() {
		if err := b.Flush(); err != nil {
			return err
		}
		off = 0
		if need(0, 1) > b.arena.Size() {
			return fmt.Errorf("verbs: %s needs %d bytes of arena, has %d", opName(op), need(0, 1), b.arena.Size())
		}
	}
	if b.buf == nil {
		// One buffer, the arena's size, for every run, each command
		// laid out in place: growing one per run, and a buffer per
		// command, were most of the cost of queueing under emulation.
		b.buf = make([]byte, 0, b.arena.Size())
	}
	n := len(b.buf)
	b.buf = b.buf[:off+size]
	clear(b.buf[n:])
	layout(b.arena.Addr()+uint64(off), b.buf[off:])
	b.cmds = append(b.cmds, queued{op: op, req: req, off: off, size: size, done: done})
	return nil
}

func opName(op func() string) string {
	if op == nil {
		return "an ioctl"
	}
	return op()
}

// command queues c; done, if not nil, runs once it has run.
func (b *Batch) command(c *command, done func() error) error {
	b.d.takeHint(c)
	return b.Ioctl(c.name, verbsIoctl, c.size(), c.layout, func(region []byte) error {
		c.take(region)
		if done == nil {
			return nil
		}
		return done()
	})
}

// Flush runs what is queued.
func (b *Batch) Flush() error {
	if len(b.cmds) == 0 {
		return nil
	}
	cmds, buf := b.cmds, b.buf
	b.cmds, b.buf = nil, nil
	defer func() {
		// Reused unless a done callback queued more meanwhile.
		if b.cmds == nil && b.buf == nil {
			b.cmds, b.buf = cmds[:0], buf[:0]
		}
	}()
	if err := b.arena.WriteAt(buf, 0); err != nil {
		return err
	}
	calls := make([]IoctlAt, len(cmds))
	for i, c := range cmds {
		calls[i] = IoctlAt{Req: c.req, Off: c.off}
	}
	ran, errno, err := b.arena.IoctlBatch(b.d.FD, calls, align8(len(buf)))
	if err != nil {
		return err
	}
	if err := b.arena.ReadAt(buf, 0); err != nil {
		return err
	}
	ok := ran
	if errno != 0 {
		ok--
	}
	for _, c := range cmds[:ok] {
		if c.done == nil {
			continue
		}
		if err := c.done(buf[c.off : c.off+c.size]); err != nil {
			return err
		}
	}
	if errno != 0 {
		return &Error{Op: opName(cmds[ok].op), Errno: errno}
	}
	if ran != len(cmds) {
		return fmt.Errorf("verbs: a batch ran %d of %d commands", ran, len(cmds))
	}
	return nil
}

// name says what c is for, in errors.
func name(what string, c *command) *command {
	c.what = what
	return c
}

// AllocPD queues the creation of a protection domain; done gets its
// handle.
func (b *Batch) AllocPD(what string, done func(h uint32) error) error {
	c := name(what, pdCommand())
	return b.command(c, func() error { return done(handleOf(c)) })
}

// DeallocPD queues the destruction of the protection domain of handle h.
func (b *Batch) DeallocPD(h uint32) error { return b.command(deallocPDCommand(h), nil) }

// CreateCQ queues Device.CreateCQ.
func (b *Batch) CreateCQ(what string, userHandle uint64, cqe uint32, channel int32, done func(CQ) error) error {
	c := name(what, cqCommand(userHandle, cqe, channel))
	return b.command(c, func() error { return done(cqOf(c)) })
}

// CreateQP queues Device.CreateQP.
func (b *Batch) CreateQP(what string, q QPInit, done func(QP) error) error {
	c := name(what, qpCommand(q))
	return b.command(c, func() error { return done(qpOf(c)) })
}

// RegMR queues Device.RegMR.
func (b *Batch) RegMR(what string, pd uint32, start, length, iova uint64, access uint32, done func(MR) error) error {
	c := name(what, mrCommand(pd, start, length, iova, access))
	return b.command(c, func() error { return done(mrOf(c)) })
}

// CreateSRQ queues Device.CreateSRQ.
func (b *Batch) CreateSRQ(what string, userHandle uint64, pd, maxWR, maxSGE, limit uint32, done func(SRQ) error) error {
	c := name(what, srqCommand(userHandle, pd, maxWR, maxSGE, limit))
	return b.command(c, func() error { return done(srqOf(c)) })
}

// CreateAH queues Device.CreateAH.
func (b *Batch) CreateAH(what string, userHandle uint64, pd uint32, a AHAttr, done func(AH) error) error {
	c := name(what, ahCommand(userHandle, pd, a))
	return b.command(c, func() error { return done(ahOf(c)) })
}

// AllocMW queues Device.AllocMW.
func (b *Batch) AllocMW(what string, pd uint32, typ uint8, done func(MW) error) error {
	c := name(what, mwCommand(pd, typ))
	return b.command(c, func() error { return done(mwOf(c)) })
}

// ModifyQP queues Device.ModifyQP.
func (b *Batch) ModifyQP(what string, h uint32, a QPAttr) error {
	return b.command(name(what, modifyQPCommand(h, a)), nil)
}

// IoctlBatch runs the calls one after another in this process.
func (a *LocalArena) IoctlBatch(fd int, calls []IoctlAt, scratch int) (int, syscall.Errno, error) {
	for i, c := range calls {
		if _, errno := a.Ioctl(fd, c.Req, c.Off); errno != 0 {
			return i + 1, errno, nil
		}
	}
	return len(calls), 0, nil
}
