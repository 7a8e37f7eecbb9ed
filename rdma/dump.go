// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// Object types of the uverbs core (enum uverbs_default_objects), as the
// core's INFO_HANDLES method and the dump methods name them.
type ObjectType uint16

const (
	ObjPD          ObjectType = 1
	ObjCompChannel ObjectType = 2
	ObjCQ          ObjectType = 3
	ObjQP          ObjectType = 4
	ObjSRQ         ObjectType = 5
	ObjAH          ObjectType = 6
	ObjMR          ObjectType = 7
	ObjMW          ObjectType = 8
)

func (t ObjectType) String() string {
	switch t {
	case ObjPD:
		return "PD"
	case ObjCompChannel:
		return "comp channel"
	case ObjCQ:
		return "CQ"
	case ObjQP:
		return "QP"
	case ObjSRQ:
		return "SRQ"
	case ObjAH:
		return "AH"
	case ObjMR:
		return "MR"
	case ObjMW:
		return "MW"
	}
	return fmt.Sprintf("ObjectType(%d)", uint16(t))
}

// QP types (enum ib_qp_type) that a dump may hold.
const (
	QPTypeRC = 2
	QPTypeUC = 3
	QPTypeUD = 4
)

// NoHandle is what a dump gives for an object it does not refer to.
const NoHandle = 0xffffffff

// Core method and attributes of INFO_HANDLES (ib_user_ioctl_cmds.h).
const (
	methodInfoHandles = 1
	attrInfoObjectID  = 0
	attrInfoTotal     = 1
	attrInfoList      = 2
)

// MigrOS dump object, methods and attributes (rxe_mig_abi.h).
const (
	objMigDump = nsDriver + 1

	methodDumpQP  = nsDriver + 0
	methodDumpCQ  = nsDriver + 1
	methodDumpSRQ = nsDriver + 2
	methodDumpMR  = nsDriver + 3
	methodDumpMW  = nsDriver + 4
	methodDumpAH  = nsDriver + 5
	// methodDumpEvents is the 8th patch's, methodDumpProgress the 10th's.
	methodDumpEvents   = nsDriver + 6
	methodDumpProgress = nsDriver + 7

	attrCQ       = nsDriver + 7
	attrSRQ      = nsDriver + 8
	attrMR       = nsDriver + 9
	attrMW       = nsDriver + 10
	attrAH       = nsDriver + 11
	attrDump     = nsDriver + 12
	attrRespRes  = nsDriver + 13
	attrEvents   = nsDriver + 14
	attrProgress = nsDriver + 15
	attrSRQWQE   = nsDriver + 16
	attrHeld     = nsDriver + 18 // the 14th patch's
	attrOldGIDs  = nsDriver + 19 // the 15th patch's
)

// Queue is a queue shared with the process (struct rxe_mig_queue): its
// buffer is mapped at Offset of the uverbs file.
type Queue struct {
	Offset       uint64 `json:"offset"`
	BufSize      uint64 `json:"buf_size"`
	Log2ElemSize uint32 `json:"log2_elem_size"`
	IndexMask    uint32 `json:"index_mask"`
	Index        uint32 `json:"index"` // the kernel's private index
	_            uint32
}

// AV is where a QP or AH sends (struct rxe_mig_av).
type AV struct {
	DGID         [16]byte `json:"dgid"`
	FlowLabel    uint32   `json:"flow_label"`
	SGIDIndex    uint8    `json:"sgid_index"`
	HopLimit     uint8    `json:"hop_limit"`
	TrafficClass uint8    `json:"traffic_class"`
	PortNum      uint8    `json:"port_num"`
	NetworkType  uint8    `json:"network_type"`
	DMAC         [6]byte  `json:"dmac"`
	_            uint8
}

// QPDump is struct rxe_mig_qp_dump.
type QPDump struct {
	UserHandle    uint64 `json:"user_handle"`
	QPN           uint32 `json:"qpn"`
	PDHandle      uint32 `json:"pd_handle"`
	SendCQHandle  uint32 `json:"send_cq_handle"`
	RecvCQHandle  uint32 `json:"recv_cq_handle"`
	SRQHandle     uint32 `json:"srq_handle"`
	QPType        uint32 `json:"qp_type"`
	SQSigAll      uint32 `json:"sq_sig_all"`
	MaxSendWR     uint32 `json:"max_send_wr"`
	MaxRecvWR     uint32 `json:"max_recv_wr"`
	MaxSendSGE    uint32 `json:"max_send_sge"`
	MaxRecvSGE    uint32 `json:"max_recv_sge"`
	MaxInlineData uint32 `json:"max_inline_data"`

	QPState         uint32 `json:"qp_state"`
	PathMTU         uint32 `json:"path_mtu"`
	QKey            uint32 `json:"qkey"`
	RQPSN           uint32 `json:"rq_psn"`
	SQPSN           uint32 `json:"sq_psn"`
	DestQPN         uint32 `json:"dest_qp_num"`
	AccessFlags     uint32 `json:"qp_access_flags"`
	PKeyIndex       uint16 `json:"pkey_index"`
	PortNum         uint8  `json:"port_num"`
	MaxRDAtomic     uint8  `json:"max_rd_atomic"`
	MaxDestRDAtomic uint8  `json:"max_dest_rd_atomic"`
	MinRNRTimer     uint8  `json:"min_rnr_timer"`
	Timeout         uint8  `json:"timeout"`
	RetryCnt        uint8  `json:"retry_cnt"`
	RNRRetry        uint8  `json:"rnr_retry"`
	_               [3]uint8
	AV              AV       `json:"av"`
	ReqPSN          uint32   `json:"req_psn"`
	ReqOpcode       uint32   `json:"req_opcode"`
	ReqWQEIndex     uint32   `json:"req_wqe_index"`
	CompPSN         uint32   `json:"comp_psn"`
	CompOpcode      uint32   `json:"comp_opcode"`
	CompRetryCnt    uint32   `json:"comp_retry_cnt"`
	CompRNRRetry    uint32   `json:"comp_rnr_retry"`
	RespPSN         uint32   `json:"resp_psn"`
	RespMSN         uint32   `json:"resp_msn"`
	RespAckPSN      uint32   `json:"resp_ack_psn"`
	RespOpcode      uint32   `json:"resp_opcode"`
	RespResHead     uint32   `json:"resp_res_head"`
	RespResTail     uint32   `json:"resp_res_tail"`
	SSN             uint32   `json:"ssn"`
	Mig             MigState `json:"mig_state"`
	McastGroups     uint32   `json:"mcast_groups,omitempty"` // UD: multicast groups attached
	MigToken        uint64   `json:"mig_token"`
	SQ              Queue    `json:"sq"`
	RQ              Queue    `json:"rq"`
}

// RespRes is a responder resource (struct rxe_mig_resp_res): how a
// repeated READ or ATOMIC request is answered.
type RespRes struct {
	Type     uint32 `json:"type"`
	Replay   uint32 `json:"replay"`
	FirstPSN uint32 `json:"first_psn"`
	LastPSN  uint32 `json:"last_psn"`
	CurPSN   uint32 `json:"cur_psn"`
	State    uint32 `json:"state"`
	OrigVal  uint64 `json:"orig_val"`
	VAOrg    uint64 `json:"va_org"`
	VA       uint64 `json:"va"`
	RKey     uint32 `json:"rkey"`
	Length   uint32 `json:"length"`
	Resid    uint32 `json:"resid"`
	_        uint32
}

// CQDump is struct rxe_mig_cq_dump.
type CQDump struct {
	UserHandle uint64 `json:"user_handle"`
	CQE        uint32 `json:"cqe"`
	Notify     uint32 `json:"notify"`
	Queue      Queue  `json:"queue"`
}

// SRQDump is struct rxe_mig_srq_dump.
type SRQDump struct {
	UserHandle uint64 `json:"user_handle"`
	SRQNum     uint32 `json:"srq_num"`
	PDHandle   uint32 `json:"pd_handle"`
	MaxWR      uint32 `json:"max_wr"`
	MaxSGE     uint32 `json:"max_sge"`
	Limit      uint32 `json:"limit"`
	_          uint32
	Queue      Queue `json:"queue"`
}

// MRDump is struct rxe_mig_mr_dump.
type MRDump struct {
	Start    uint64 `json:"start"`
	Length   uint64 `json:"length"`
	IOVA     uint64 `json:"iova"`
	LKey     uint32 `json:"lkey"`
	RKey     uint32 `json:"rkey"`
	Access   uint32 `json:"access"`
	PDHandle uint32 `json:"pd_handle"`
}

// MWDump is struct rxe_mig_mw_dump.
type MWDump struct {
	Addr     uint64 `json:"addr"`
	Length   uint64 `json:"length"`
	RKey     uint32 `json:"rkey"`
	Type     uint32 `json:"type"`
	State    uint32 `json:"state"`
	Access   uint32 `json:"access"`
	PDHandle uint32 `json:"pd_handle"`
	MRLKey   uint32 `json:"mr_lkey"`
	QPN      uint32 `json:"qpn"`
	_        uint32
}

// AHDump is struct rxe_mig_ah_dump.
type AHDump struct {
	UserHandle uint64 `json:"user_handle"`
	AHNum      uint32 `json:"ah_num"`
	PDHandle   uint32 `json:"pd_handle"`
	AV         AV     `json:"av"`
}

// Handles lists the uverbs handles of the context's objects of type t.
func (c *Context) Handles(t ObjectType) ([]uint32, error) {
	for capacity := 256; ; capacity *= 4 {
		list := make([]byte, 4*capacity)
		total := make([]byte, 4)
		attrs := []attr{
			{id: attrInfoObjectID, len: 8, data: uint64(t)},
			outAttr(attrInfoTotal, total),
			outAttr(attrInfoList, list),
		}
		if err := c.ioctl("list "+t.String()+" handles", objDevice, methodInfoHandles, attrs, total, list); err != nil {
			return nil, err
		}
		n := int(binary.LittleEndian.Uint32(total))
		if n < capacity {
			h := make([]uint32, n)
			for i := range h {
				h[i] = binary.LittleEndian.Uint32(list[4*i:])
			}
			return h, nil
		}
	}
}

// dump runs a dump method on the object with handle h into v.
func (c *Context) dump(t ObjectType, method, handleAttr uint16, h uint32, v any) error {
	out := make([]byte, binary.Size(v))
	op := fmt.Sprintf("dump %s %d", t, h)
	if err := c.ioctl(op, objMigDump, method, []attr{{id: handleAttr, data: uint64(h)}, outAttr(attrDump, out)}, out); err != nil {
		return err
	}
	return decode(out, v)
}

// maxRespRes bounds a QP's responder resources: max_dest_rd_atomic is a u8.
const maxRespRes = 255

// DumpQP reports the QP with handle h and its responder resources.
func (c *Context) DumpQP(h uint32) (QPDump, []RespRes, error) {
	var d QPDump
	dump := make([]byte, binary.Size(d))
	raw := make([]byte, maxRespRes*binary.Size(RespRes{}))
	attrs := []attr{{id: attrQP, data: uint64(h)}, outAttr(attrDump, dump), outAttr(attrRespRes, raw)}
	if err := c.ioctl(fmt.Sprintf("dump QP %d", h), objMigDump, methodDumpQP, attrs, dump, raw); err != nil {
		return d, nil, err
	}
	if err := decode(dump, &d); err != nil {
		return d, nil, err
	}
	res := make([]RespRes, d.MaxDestRDAtomic)
	if err := decode(raw[:binary.Size(res)], res); err != nil {
		return d, nil, err
	}
	return d, res, nil
}

// Events is the uverbs core's event bookkeeping of a CQ, QP or SRQ
// (struct rxe_mig_events): libibverbs' destroy waits until the process
// has acknowledged as many events as the core says it delivered.
type Events struct {
	AsyncReported uint32 `json:"async_reported"`
	CompReported  uint32 `json:"comp_reported,omitempty"` // CQ only
	CompPending   uint32 `json:"comp_pending,omitempty"`  // CQ: queued on its channel, unread
	_             uint32
}

// handleAttr is the attribute that names an object of type t.
func handleAttr(t ObjectType) (uint16, error) {
	switch t {
	case ObjCQ:
		return attrCQ, nil
	case ObjQP:
		return attrQP, nil
	case ObjSRQ:
		return attrSRQ, nil
	}
	return 0, fmt.Errorf("rdma: a %s has no event counts", t)
}

// DumpEvents reports the event counts of the CQ, QP or SRQ with handle h.
func (c *Context) DumpEvents(t ObjectType, h uint32) (Events, error) {
	var ev Events
	a, err := handleAttr(t)
	if err != nil {
		return ev, err
	}
	out := make([]byte, binary.Size(ev))
	if err := c.ioctl(fmt.Sprintf("dump events of %s %d", t, h), objMigDump, methodDumpEvents,
		[]attr{{id: a, data: uint64(h)}, outAttr(attrEvents, out)}, out); err != nil {
		return ev, err
	}
	return ev, decode(out, &ev)
}

// RespProgress is where a QP's responder is inside a multi-packet
// message (struct rxe_mig_resp_progress): an RDMA WRITE's target, and
// whether it holds a receive WQE taken from its SRQ (SRQWQE, the driver's
// own layout). A Stopped UD or UC QP also holds the requests that reached
// it (HeldCount of them, HeldBytes of records, see DumpProgress).
type RespProgress struct {
	VA         uint64 `json:"va"`
	Offset     uint64 `json:"offset"`
	RKey       uint32 `json:"rkey"`
	Resid      uint32 `json:"resid"`
	Length     uint32 `json:"length"`
	SRQWQESize uint32 `json:"srq_wqe_size"`
	HeldCount  uint32 `json:"held_count"`
	HeldBytes  uint32 `json:"held_bytes"`
}

const (
	// maxSRQWQE bounds the receive WQE copy an SRQ QP's responder holds.
	maxSRQWQE = 4096
	// MaxHeld is how many requests a Stopped UD or UC QP holds at most
	// (RXE_MIG_HELD_MAX), maxHeldRecord the largest record of one: an
	// IPv6, UDP, BTH, DETH/RETH and immediate header, a 4096-byte payload
	// with its pad and ICRC, and the record header, rounded up to 8.
	MaxHeld       = 256
	maxHeldRecord = 4200
)

// heldBuf is struct rxe_mig_buf: a buffer of ours the driver copies held
// requests to or from (they exceed what an attribute carries).
func heldBuf(b []byte) []byte {
	var v [16]byte
	if len(b) > 0 {
		binary.LittleEndian.PutUint64(v[:], addrOf(b))
		binary.LittleEndian.PutUint32(v[8:], uint32(len(b)))
	}
	return v[:]
}

// DumpProgress reports the responder progress of the QP with handle h,
// of type qpType, the SRQ receive WQE it holds, if any, and for a Stopped
// UD or UC QP the requests it holds.
func (c *Context) DumpProgress(h uint32, qpType uint32) (p RespProgress, srqWQE, held []byte, err error) {
	out, wqe := make([]byte, binary.Size(p)), make([]byte, maxSRQWQE)
	call := func(held []byte) error {
		attrs := []attr{{id: attrQP, data: uint64(h)}, outAttr(attrProgress, out), outAttr(attrSRQWQE, wqe)}
		bufs := [][]byte{out, wqe}
		if held != nil {
			hb := heldBuf(held)
			attrs = append(attrs, inAttr(attrHeld, hb))
			bufs = append(bufs, hb, held)
		}
		return c.ioctl(fmt.Sprintf("dump responder progress of QP %d", h), objMigDump, methodDumpProgress, attrs, bufs...)
	}
	// Room for a few held requests first; the driver says when there
	// are more (ENOSPC), and the second try has room for the most it
	// holds (more may have arrived in between).
	if qpType != QPTypeRC {
		held = make([]byte, 4*maxHeldRecord)
	}
	err = call(held)
	if errors.Is(err, syscall.ENOSPC) && held != nil {
		held = make([]byte, MaxHeld*maxHeldRecord)
		err = call(held)
	}
	if err != nil {
		return p, nil, nil, err
	}
	if err := decode(out, &p); err != nil {
		return p, nil, nil, err
	}
	if int(p.SRQWQESize) > len(wqe) || int(p.HeldBytes) > len(held) {
		return p, nil, nil, fmt.Errorf("rdma: QP %d: driver reports %d SRQ WQE and %d held bytes", h, p.SRQWQESize, p.HeldBytes)
	}
	if p.SRQWQESize > 0 {
		srqWQE = wqe[:p.SRQWQESize]
	}
	if p.HeldBytes > 0 {
		held = held[:p.HeldBytes:p.HeldBytes]
	} else {
		held = nil
	}
	return p, srqWQE, held, nil
}

// DumpCQ reports the CQ with handle h.
func (c *Context) DumpCQ(h uint32) (CQDump, error) {
	var d CQDump
	return d, c.dump(ObjCQ, methodDumpCQ, attrCQ, h, &d)
}

// DumpSRQ reports the SRQ with handle h.
func (c *Context) DumpSRQ(h uint32) (SRQDump, error) {
	var d SRQDump
	return d, c.dump(ObjSRQ, methodDumpSRQ, attrSRQ, h, &d)
}

// DumpMR reports the MR with handle h.
func (c *Context) DumpMR(h uint32) (MRDump, error) {
	var d MRDump
	return d, c.dump(ObjMR, methodDumpMR, attrMR, h, &d)
}

// DumpMW reports the MW with handle h.
func (c *Context) DumpMW(h uint32) (MWDump, error) {
	var d MWDump
	return d, c.dump(ObjMW, methodDumpMW, attrMW, h, &d)
}

// DumpAH reports the AH with handle h.
func (c *Context) DumpAH(h uint32) (AHDump, error) {
	var d AHDump
	return d, c.dump(ObjAH, methodDumpAH, attrAH, h, &d)
}

// Dumped objects, each with its uverbs handle.
type (
	QPObject struct {
		Handle   uint32       `json:"handle"`
		QPDump                // embedded: the kernel's record
		RespRes  []RespRes    `json:"resp_res,omitempty"`
		Events   Events       `json:"events"`
		Progress RespProgress `json:"resp_progress"`
		SRQWQE   []byte       `json:"srq_wqe,omitempty"`
		// Held: the requests a Stopped UD or UC QP held (struct
		// rxe_mig_held records), given back to the restored QP.
		Held []byte `json:"held,omitempty"`
	}
	CQObject struct {
		Handle uint32 `json:"handle"`
		CQDump
		Events Events `json:"events"`
	}
	SRQObject struct {
		Handle uint32 `json:"handle"`
		SRQDump
		Events Events `json:"events"`
	}
	MRObject struct {
		Handle uint32 `json:"handle"`
		MRDump
	}
	MWObject struct {
		Handle uint32 `json:"handle"`
		MWDump
	}
	AHObject struct {
		Handle uint32 `json:"handle"`
		AHDump
	}
)

// ContextDump is every rxe object of a uverbs context.
type ContextDump struct {
	Path string      `json:"path"`
	FD   int         `json:"fd"`
	PDs  []uint32    `json:"pds"`
	CQs  []CQObject  `json:"cqs"`
	SRQs []SRQObject `json:"srqs"`
	QPs  []QPObject  `json:"qps"`
	MRs  []MRObject  `json:"mrs"`
	MWs  []MWObject  `json:"mws"`
	AHs  []AHObject  `json:"ahs"`
}

// Dump reports every object of the context. For a consistent dump, stop
// the context's QPs first.
func (c *Context) Dump() (*ContextDump, error) {
	d := &ContextDump{Path: c.Path, FD: c.FD}
	var err error
	if d.PDs, err = c.Handles(ObjPD); err != nil {
		return nil, err
	}
	each := func(t ObjectType, fn func(h uint32) error) error {
		hs, err := c.Handles(t)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := fn(h); err != nil {
				return err
			}
		}
		return nil
	}
	steps := []struct {
		t  ObjectType
		fn func(h uint32) error
	}{
		{ObjCQ, func(h uint32) error {
			o, err := c.DumpCQ(h)
			if err != nil {
				return err
			}
			ev, err := c.DumpEvents(ObjCQ, h)
			d.CQs = append(d.CQs, CQObject{h, o, ev})
			return err
		}},
		{ObjSRQ, func(h uint32) error {
			o, err := c.DumpSRQ(h)
			if err != nil {
				return err
			}
			ev, err := c.DumpEvents(ObjSRQ, h)
			d.SRQs = append(d.SRQs, SRQObject{h, o, ev})
			return err
		}},
		{ObjQP, func(h uint32) error {
			o, res, err := c.DumpQP(h)
			if err != nil {
				return err
			}
			ev, err := c.DumpEvents(ObjQP, h)
			if err != nil {
				return err
			}
			q := QPObject{Handle: h, QPDump: o, RespRes: res, Events: ev}
			q.Progress, q.SRQWQE, q.Held, err = c.DumpProgress(h, o.QPType)
			d.QPs = append(d.QPs, q)
			return err
		}},
		{ObjMR, func(h uint32) error {
			o, err := c.DumpMR(h)
			d.MRs = append(d.MRs, MRObject{h, o})
			return err
		}},
		{ObjMW, func(h uint32) error {
			o, err := c.DumpMW(h)
			d.MWs = append(d.MWs, MWObject{h, o})
			return err
		}},
		{ObjAH, func(h uint32) error {
			o, err := c.DumpAH(h)
			d.AHs = append(d.AHs, AHObject{h, o})
			return err
		}},
	}
	for _, s := range steps {
		if err := each(s.t, s.fn); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// IDs are the object numbers of d that peers or the process know, which a
// restore must get back: QPNs, MR and MW keys, SRQ and AH numbers.
func (d *ContextDump) IDs() []ID {
	var ids []ID
	for _, q := range d.QPs {
		ids = append(ids, ID{Type: IDQP, Index: q.QPN})
	}
	for _, s := range d.SRQs {
		ids = append(ids, ID{Type: IDSRQ, Index: s.SRQNum})
	}
	for _, m := range d.MRs {
		ids = append(ids, KeyID(IDMR, m.LKey))
	}
	for _, w := range d.MWs {
		ids = append(ids, KeyID(IDMW, w.RKey))
	}
	for _, a := range d.AHs {
		ids = append(ids, ID{Type: IDAH, Index: a.AHNum})
	}
	return ids
}

// KeyID is the ID of an MR (by lkey) or MW (by rkey): its index and key
// byte.
func KeyID(t IDType, key uint32) ID {
	return ID{Type: t, Index: key >> 8, Key: uint8(key), HasKey: true}
}

// AllHandles lists the uverbs handle of every object of d.
func (d *ContextDump) AllHandles() []uint32 {
	hs := append([]uint32(nil), d.PDs...)
	for _, o := range d.CQs {
		hs = append(hs, o.Handle)
	}
	for _, o := range d.SRQs {
		hs = append(hs, o.Handle)
	}
	for _, o := range d.QPs {
		hs = append(hs, o.Handle)
	}
	for _, o := range d.MRs {
		hs = append(hs, o.Handle)
	}
	for _, o := range d.MWs {
		hs = append(hs, o.Handle)
	}
	for _, o := range d.AHs {
		hs = append(hs, o.Handle)
	}
	return hs
}
