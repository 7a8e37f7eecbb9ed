// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// MigrOS restore object and methods (rxe_mig_abi.h).
const (
	objMigRestore    = nsDriver + 2
	methodRestoreQP  = nsDriver + 0
	methodRestoreCQ  = nsDriver + 1
	methodRestoreSRQ = nsDriver + 2
	// methodRestoreEvents is the 8th patch's. Its successor (nsDriver +
	// 4), RESTORE_PROGRESS, is gone: RESTORE_QP takes the progress.
	methodRestoreEvents = nsDriver + 3

	// methodRestoreMW is the 12th patch's.
	methodRestoreMW = nsDriver + 5

	// methodShareCred and attrFD are the 11th patch's.
	methodShareCred = nsDriver + 6
	attrFD          = nsDriver + 17
)

// ShareCredCall returns the ioctl request and argument with which a thread
// that holds uverbs file fd makes the file's cred struct its own (the
// 11th kernel patch), so that librxe's doorbell, a write() that uverbs
// lets through only for the cred struct that opened the file, works in
// that thread too. CRIU gives each restored thread a cred struct of its
// own; the driver swaps it only for one with the same credentials, and
// refuses with EPERM if they differ.
//
// The call must run in the thread itself (restore runs it in each of a
// restored process' threads); its attribute is inline, so arg is all the
// memory it needs.
func ShareCredCall(fd int32) (req uint64, arg []byte) {
	var v [4]byte
	binary.LittleEndian.PutUint32(v[:], uint32(fd))
	return verbsIoctl, encodeCall(objMig, methodShareCred, []attr{inAttr(attrFD, v[:])})
}

// IoctlCall is a uverbs ioctl laid out for a batch run elsewhere (in a
// restored process, or in a verbs.Batch here): ioctl(fd, Req, p), p being
// Size bytes that Layout lays out in dst (zeroed, of that size) for address
// p. Name says what it is,
// for errors (formatted only then). A call of Size 0 has nothing to run.
type IoctlCall struct {
	Name   func() string
	Req    uint64
	Size   int
	Layout func(base uint64, dst []byte)
}

// call lays out a call of a MigrOS method on the object of handle h (see
// relocatable); op says what it does.
func call(op string, h uint32, object, method uint16, attrs []attr, bufs [][]byte) IoctlCall {
	size, _, layout := relocatable(object, method, attrs, bufs)
	return IoctlCall{Name: named(op, h), Req: verbsIoctl, Size: size, Layout: layout}
}

func named(op string, h uint32) func() string {
	return func() string { return fmt.Sprintf("%s %d", op, h) }
}

// RestoreQP loads a dumped QP's driver state (PSNs, opcodes, retry counts,
// MSN, responder resources, queue indices, token) and its responder's
// progress (where it was inside the message it was receiving, the SRQ
// WQE it held, a UD or UC QP's held requests, which it processes when
// resumed) into the QP with handle q.Handle, which was recreated with the
// same caps, modified to the dumped IB state and Stopped, and whose rings
// hold their dumped contents. It stays Stopped. A QP dumped inside a SEND
// is refused if its progress does not give its receive WQE back.
//
// oldGIDs, for a UD QP restored on another host, are the GIDs of the port
// it was dumped on: when resumed, it tells the destinations of its
// context's AHs to send what they sent it there here.
func (c *Context) RestoreQP(q QPObject, oldGIDs []string) error {
	attrs, bufs, err := restoreQPArgs(q, oldGIDs)
	if err != nil {
		return err
	}
	return c.ioctl(fmt.Sprintf("restore QP %d", q.Handle), objMigRestore, methodRestoreQP, attrs, bufs...)
}

// RestoreQPCall is RestoreQP for a batch.
func RestoreQPCall(q QPObject, oldGIDs []string) (IoctlCall, error) {
	attrs, bufs, err := restoreQPArgs(q, oldGIDs)
	if err != nil {
		return IoctlCall{}, err
	}
	size, offs, layout := relocatable(objMigRestore, methodRestoreQP, attrs, bufs)
	call := IoctlCall{Name: named("restore QP", q.Handle), Req: verbsIoctl, Size: size, Layout: layout}
	if len(q.Held) > 0 {
		// The held requests go through a struct rxe_mig_buf, the
		// next to last buffer, which points to them, the last: it
		// moves with them.
		ref, at := offs[len(offs)-2], offs[len(offs)-1]
		call.Layout = func(base uint64, dst []byte) {
			layout(base, dst)
			binary.LittleEndian.PutUint64(dst[ref:], base+uint64(at))
		}
	}
	return call, nil
}

// relocatable lays out a call for another address: the header and
// attributes, then each buffer (8-byte aligned) that an attribute points
// to, the attribute pointing to its copy. offs are the buffers' offsets
// in the call.
func relocatable(object, method uint16, attrs []attr, bufs [][]byte) (size int, offs []int, layout func(base uint64, dst []byte)) {
	size = hdrSize + attrSize*len(attrs)
	offs = make([]int, len(bufs))
	for i, b := range bufs {
		size = (size + 7) &^ 7
		offs[i] = size
		size += len(b)
	}
	return size, offs, func(base uint64, dst []byte) {
		moved := slices.Clone(attrs)
		for i := range moved {
			for j, b := range bufs {
				if len(b) > 8 && moved[i].data == addrOf(b) {
					moved[i].data = base + uint64(offs[j])
				}
			}
		}
		copy(dst, encodeCall(object, method, moved))
		for j, b := range bufs {
			copy(dst[offs[j]:], b)
		}
	}
}

// restoreQPArgs are RestoreQP's attributes and the buffers they point to;
// held requests, if any, come last, after the rxe_mig_buf that names them.
func restoreQPArgs(q QPObject, oldGIDs []string) ([]attr, [][]byte, error) {
	if int(q.Progress.HeldBytes) != len(q.Held) {
		return nil, nil, fmt.Errorf("rdma: QP %d: %d bytes of held requests, the progress says %d", q.Handle, len(q.Held), q.Progress.HeldBytes)
	}
	in, p := encode(q.QPDump), encode(q.Progress)
	attrs := []attr{{id: attrQP, data: uint64(q.Handle)}, inAttr(attrDump, in), inAttr(attrProgress, p)}
	bufs := [][]byte{in, p}
	if len(q.RespRes) > 0 {
		r := encode(q.RespRes)
		attrs = append(attrs, inAttr(attrRespRes, r))
		bufs = append(bufs, r)
	}
	if len(oldGIDs) > 0 {
		g, err := gidBytes(oldGIDs)
		if err != nil {
			return nil, nil, err
		}
		attrs = append(attrs, inAttr(attrOldGIDs, g))
		bufs = append(bufs, g)
	}
	if len(q.SRQWQE) > 0 {
		attrs = append(attrs, inAttr(attrSRQWQE, q.SRQWQE))
		bufs = append(bufs, q.SRQWQE)
	}
	if len(q.Held) > 0 {
		hb := heldBuf(q.Held)
		attrs = append(attrs, inAttr(attrHeld, hb))
		bufs = append(bufs, hb, q.Held)
	}
	return attrs, bufs, nil
}

// RestoreCQ loads a dumped CQ's queue index and arm state into the CQ with
// handle h.
func (c *Context) RestoreCQ(h uint32, d CQDump) error {
	in := encode(d)
	return c.ioctl(fmt.Sprintf("restore CQ %d", h), objMigRestore, methodRestoreCQ,
		[]attr{{id: attrCQ, data: uint64(h)}, inAttr(attrDump, in)}, in)
}

// RestoreSRQ loads a dumped SRQ's queue index and limit into the SRQ with
// handle h.
func (c *Context) RestoreSRQ(h uint32, d SRQDump) error {
	in := encode(d)
	return c.ioctl(fmt.Sprintf("restore SRQ %d", h), objMigRestore, methodRestoreSRQ,
		[]attr{{id: attrSRQ, data: uint64(h)}, inAttr(attrDump, in)}, in)
}

// RestoreMW binds the recreated MW with handle h as d says it was bound:
// over d's range of the MR with handle mr and, for a type 2 MW, to the QP
// with handle qp (nil for type 1). The MW must have been recreated with
// d's rkey.
func (c *Context) RestoreMW(h, mr uint32, qp *uint32, d MWDump) error {
	in := encode(d)
	attrs := []attr{{id: attrMW, data: uint64(h)}, {id: attrMR, data: uint64(mr)}, inAttr(attrDump, in)}
	if qp != nil {
		attrs = append(attrs, attr{id: attrQP, data: uint64(*qp)})
	}
	return c.ioctl(fmt.Sprintf("restore the binding of MW %d", h), objMigRestore, methodRestoreMW, attrs, in)
}

// RestoreEvents sets the event counts of a recreated CQ, QP or SRQ with
// handle h, and queues a CQ's pending completion events again on its
// completion channel.
func (c *Context) RestoreEvents(t ObjectType, h uint32, ev Events) error {
	if ev == (Events{}) {
		return nil // a new object's counts are zero already
	}
	attrs, in, err := restoreEventsArgs(t, h, ev)
	if err != nil {
		return err
	}
	return c.ioctl(fmt.Sprintf("restore events of %s %d", t, h), objMigRestore, methodRestoreEvents, attrs, in)
}

// RestoreEventsCall is RestoreEvents for a batch: a call of size 0 if ev
// is all zero.
func RestoreEventsCall(t ObjectType, h uint32, ev Events) (IoctlCall, error) {
	if ev == (Events{}) {
		return IoctlCall{}, nil
	}
	attrs, in, err := restoreEventsArgs(t, h, ev)
	if err != nil {
		return IoctlCall{}, err
	}
	return call("restore events of "+t.String(), h, objMigRestore, methodRestoreEvents, attrs, [][]byte{in}), nil
}

func restoreEventsArgs(t ObjectType, h uint32, ev Events) ([]attr, []byte, error) {
	a, err := handleAttr(t)
	if err != nil {
		return nil, nil, err
	}
	in := encode(ev)
	return []attr{{id: a, data: uint64(h)}, inAttr(attrEvents, in)}, in, nil
}
