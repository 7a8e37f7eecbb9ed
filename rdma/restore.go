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
	// methodRestoreEvents is the 8th patch's, methodRestoreProgress the
	// 10th's.
	methodRestoreEvents   = nsDriver + 3
	methodRestoreProgress = nsDriver + 4

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

// HintCall is SetHint for a batch run elsewhere: the ioctl request and
// its argument, size bytes that layout lays out for address base.
func HintCall(id ID) (req uint64, size int, layout func(base uint64) []byte) {
	b := id.append(nil)
	size, layout = relocatable(objMig, methodSetHint, []attr{inAttr(attrID, b)}, [][]byte{b})
	return verbsIoctl, size, layout
}

// RestoreQP loads a dumped QP's driver state (PSNs, opcodes, retry counts,
// MSN, responder resources, queue indices, token) into the QP with handle
// h, which was recreated with the same caps, modified to the dumped IB
// state and Stopped. It stays Stopped.
//
// oldGIDs, for a UD QP restored on another host, are the GIDs of the port
// it was dumped on: when resumed, it tells the destinations of its
// context's AHs to send what they sent it there here.
func (c *Context) RestoreQP(h uint32, d QPDump, res []RespRes, oldGIDs []string) error {
	attrs, bufs, err := restoreQPArgs(h, d, res, oldGIDs)
	if err != nil {
		return err
	}
	return c.ioctl(fmt.Sprintf("restore QP %d", h), objMigRestore, methodRestoreQP, attrs, bufs...)
}

// RestoreQPCall is RestoreQP for a batch run elsewhere: the ioctl request
// and its argument, size bytes that layout lays out for address base.
func RestoreQPCall(h uint32, d QPDump, res []RespRes, oldGIDs []string) (req uint64, size int, layout func(base uint64) []byte, err error) {
	attrs, bufs, err := restoreQPArgs(h, d, res, oldGIDs)
	if err != nil {
		return 0, 0, nil, err
	}
	size, layout = relocatable(objMigRestore, methodRestoreQP, attrs, bufs)
	return verbsIoctl, size, layout, nil
}

// relocatable lays out a call for another address: the header and
// attributes, then each buffer (8-byte aligned) that an attribute points
// to, the attribute pointing to its copy.
func relocatable(object, method uint16, attrs []attr, bufs [][]byte) (int, func(base uint64) []byte) {
	size := hdrSize + attrSize*len(attrs)
	offs := make([]int, len(bufs))
	for i, b := range bufs {
		size = (size + 7) &^ 7
		offs[i] = size
		size += len(b)
	}
	return size, func(base uint64) []byte {
		moved := slices.Clone(attrs)
		for i := range moved {
			for j, b := range bufs {
				if len(b) > 8 && moved[i].data == addrOf(b) {
					moved[i].data = base + uint64(offs[j])
				}
			}
		}
		out := make([]byte, size)
		copy(out, encodeCall(object, method, moved))
		for j, b := range bufs {
			copy(out[offs[j]:], b)
		}
		return out
	}
}

// restoreQPArgs are RestoreQP's attributes and the buffers they point to.
func restoreQPArgs(h uint32, d QPDump, res []RespRes, oldGIDs []string) ([]attr, [][]byte, error) {
	in := encode(d)
	attrs := []attr{{id: attrQP, data: uint64(h)}, inAttr(attrDump, in)}
	bufs := [][]byte{in}
	if len(res) > 0 {
		r := encode(res)
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
	a, err := handleAttr(t)
	if err != nil {
		return err
	}
	in := encode(ev)
	return c.ioctl(fmt.Sprintf("restore events of %s %d", t, h), objMigRestore, methodRestoreEvents,
		[]attr{{id: a, data: uint64(h)}, inAttr(attrEvents, in)}, in)
}

// RestoreProgress puts the responder of the Stopped QP with handle h back
// inside the message it was receiving, after RestoreQP and once its RQ
// ring holds its dumped contents, and gives a UD or UC QP back the
// requests it held, which it processes when resumed.
func (c *Context) RestoreProgress(h uint32, p RespProgress, srqWQE, held []byte) error {
	if int(p.HeldBytes) != len(held) {
		return fmt.Errorf("rdma: QP %d: %d bytes of held requests, the progress says %d", h, len(held), p.HeldBytes)
	}
	in := encode(p)
	attrs := []attr{{id: attrQP, data: uint64(h)}, inAttr(attrProgress, in)}
	bufs := [][]byte{in}
	if len(srqWQE) > 0 {
		attrs = append(attrs, inAttr(attrSRQWQE, srqWQE))
		bufs = append(bufs, srqWQE)
	}
	if len(held) > 0 {
		hb := heldBuf(held)
		attrs = append(attrs, inAttr(attrHeld, hb))
		bufs = append(bufs, hb, held)
	}
	return c.ioctl(fmt.Sprintf("restore responder progress of QP %d", h), objMigRestore, methodRestoreProgress, attrs, bufs...)
}
