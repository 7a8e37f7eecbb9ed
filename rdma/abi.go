// SPDX-License-Identifier: Apache-2.0

// Package rdma speaks the MigrOS control interface of our rdma_rxe: uverbs
// methods in rxe's driver namespace (kernel/patches, rxe_mig_abi.h), called
// with RDMA_VERBS_IOCTL on a process' uverbs file. It stops a process' QPs
// for migration, resumes them, and reports their state. Pure Go: no cgo.
package rdma

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// uverbs ioctl ABI (include/uapi/rdma/rdma_user_ioctl_cmds.h).
const (
	// RDMA_VERBS_IOCTL = _IOWR(0x1b, 1, struct ib_uverbs_ioctl_hdr)
	verbsIoctl = 0xc0181b01
	hdrSize    = 24
	attrSize   = 16

	driverRXE = 14 // RDMA_DRIVER_RXE

	nsDriver = 1 << 12 // UVERBS_ID_NS_SHIFT
)

// Core uverbs objects, methods and attributes (ib_user_ioctl_cmds.h) used
// to issue the classic verbs commands through the ioctl interface, as
// rdma-core does (UVERBS_METHOD_INVOKE_WRITE).
const (
	objDevice         = 0 // UVERBS_OBJECT_DEVICE
	methodInvokeWrite = 0 // UVERBS_METHOD_INVOKE_WRITE

	attrCoreIn   = 0 // UVERBS_ATTR_CORE_IN
	attrCoreOut  = 1 // UVERBS_ATTR_CORE_OUT
	attrWriteCmd = 2 // UVERBS_ATTR_WRITE_CMD

	cmdGetContext = 0 // IB_USER_VERBS_CMD_GET_CONTEXT
)

// rxe_mig_abi.h
const (
	objMig = nsDriver

	methodStop    = nsDriver + 0
	methodResume  = nsDriver + 1
	methodQueryQP = nsDriver + 2
	methodListQPs = nsDriver + 3
	// methodAllowHints is the 17th patch's (it took SET_HINT's number).
	methodAllowHints = nsDriver + 4
	methodCheck      = nsDriver + 5

	attrQP     = nsDriver + 0
	attrCount  = nsDriver + 1
	attrQPInfo = nsDriver + 2
	attrQPList = nsDriver + 3
	attrIDs    = nsDriver + 5
	attrStatus = nsDriver + 6
	attrAllow  = nsDriver + 20 // the 17th patch's

	qpInfoSize = 48
	qpRefSize  = 8
	idSize     = 16
)

// attr is one ib_uverbs_attr.
type attr struct {
	id   uint16
	len  uint16
	data uint64 // handle, or address of a buffer
}

// encodeCall lays out an ib_uverbs_ioctl_hdr and its attributes.
func encodeCall(object, method uint16, attrs []attr) []byte {
	b := make([]byte, hdrSize+attrSize*len(attrs))
	le := binary.LittleEndian
	le.PutUint16(b[0:], uint16(len(b)))
	le.PutUint16(b[2:], object)
	le.PutUint16(b[4:], method)
	le.PutUint16(b[6:], uint16(len(attrs)))
	le.PutUint32(b[16:], driverRXE)
	for i, a := range attrs {
		o := b[hdrSize+attrSize*i:]
		le.PutUint16(o[0:], a.id)
		le.PutUint16(o[2:], a.len)
		le.PutUint64(o[8:], a.data)
	}
	return b
}

// MigState is a QP's migration state.
type MigState uint32

const (
	MigNone    MigState = 0
	MigStopped MigState = 1
	MigPaused  MigState = 2
)

func (s MigState) String() string {
	switch s {
	case MigNone:
		return "none"
	case MigStopped:
		return "stopped"
	case MigPaused:
		return "paused"
	}
	return fmt.Sprintf("MigState(%d)", uint32(s))
}

// MarshalText makes MigState print as a word in JSON.
func (s MigState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (s *MigState) UnmarshalText(b []byte) error {
	for _, v := range []MigState{MigNone, MigStopped, MigPaused} {
		if string(b) == v.String() {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("rdma: unknown migration state %q", b)
}

// QPInfo is struct rxe_mig_qp_info.
type QPInfo struct {
	Handle   uint32   `json:"handle"`
	QPN      uint32   `json:"qpn"`
	DestQPN  uint32   `json:"dest_qpn"`
	QPState  uint32   `json:"qp_state"` // enum ib_qp_state: 2 RTR, 3 RTS
	Mig      MigState `json:"mig_state"`
	Resuming bool     `json:"resuming"`
	ReqPSN   uint32   `json:"req_psn"`
	CompPSN  uint32   `json:"comp_psn"`
	RespPSN  uint32   `json:"resp_psn"`
	RespMSN  uint32   `json:"resp_msn"`
	PausedMS uint64   `json:"paused_ms"`
}

func decodeQPInfo(b []byte) QPInfo {
	le := binary.LittleEndian
	return QPInfo{
		QPN:      le.Uint32(b[0:]),
		DestQPN:  le.Uint32(b[4:]),
		QPState:  le.Uint32(b[8:]),
		Mig:      MigState(le.Uint32(b[12:])),
		Resuming: le.Uint32(b[16:]) != 0,
		ReqPSN:   le.Uint32(b[20:]),
		CompPSN:  le.Uint32(b[24:]),
		RespPSN:  le.Uint32(b[28:]),
		RespMSN:  le.Uint32(b[32:]),
		PausedMS: le.Uint64(b[40:]),
	}
}

// QPRef names an RC QP of a context: its uverbs handle and QPN.
type QPRef struct {
	Handle uint32 `json:"handle"`
	QPN    uint32 `json:"qpn"`
}

func decodeQPRefs(b []byte, n int) []QPRef {
	refs := make([]QPRef, n)
	for i := range refs {
		refs[i] = QPRef{
			Handle: binary.LittleEndian.Uint32(b[i*qpRefSize:]),
			QPN:    binary.LittleEndian.Uint32(b[i*qpRefSize+4:]),
		}
	}
	return refs
}

// IDType is the kind of object an ID names (enum rxe_mig_id_type).
type IDType uint32

const (
	IDQP  IDType = 1 // Index is the QPN
	IDMR  IDType = 2 // Index is lkey >> 8, Key lkey & 0xff
	IDMW  IDType = 3 // Index is rkey >> 8, Key rkey & 0xff
	IDSRQ IDType = 4 // Index is srq_num
	IDAH  IDType = 5 // Index is ah_num
)

func (t IDType) String() string {
	switch t {
	case IDQP:
		return "QPN"
	case IDMR:
		return "MR"
	case IDMW:
		return "MW"
	case IDSRQ:
		return "SRQ"
	case IDAH:
		return "AH"
	}
	return fmt.Sprintf("IDType(%d)", uint32(t))
}

// ID is an object number that peers or the process know, which a restore
// must reproduce (struct rxe_mig_id).
type ID struct {
	Type   IDType
	Index  uint32
	Key    uint8 // MR and MW: the key byte, if HasKey
	HasKey bool
}

func (id ID) String() string {
	if id.HasKey {
		return fmt.Sprintf("%s %#x (key %#02x)", id.Type, id.Index<<8|uint32(id.Key), id.Key)
	}
	return fmt.Sprintf("%s %#x", id.Type, id.Index)
}

const idHasKey = 1 // RXE_MIG_ID_HAS_KEY

// Hint is the driver input with which a create of an object of id.Type
// takes exactly id (and, for an MR or MW with HasKey, its key byte): see
// verbs.Device.Hint. The create fails with EBUSY if another object has
// that ID, and with EPERM unless its context allows hints
// (Context.AllowHints) or its creator has CAP_SYS_ADMIN.
func (id ID) Hint() []byte { return id.append(nil) }

func (id ID) append(b []byte) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(id.Type))
	b = le.AppendUint32(b, id.Index)
	b = le.AppendUint32(b, uint32(id.Key))
	var flags uint32
	if id.HasKey {
		flags = idHasKey
	}
	return le.AppendUint32(b, flags)
}

func encodeIDs(ids []ID) []byte {
	b := make([]byte, 0, len(ids)*idSize)
	for _, id := range ids {
		b = id.append(b)
	}
	return b
}

// ParseID reads an ID written as TYPE:NUMBER, as operators see them: qp:QPN,
// mr:LKEY, mw:RKEY, srq:SRQ_NUM, ah:AH_NUM (decimal or 0x-prefixed hex).
func ParseID(s string) (ID, error) {
	typ, num, ok := strings.Cut(s, ":")
	if !ok {
		return ID{}, fmt.Errorf("rdma: ID %q: want TYPE:NUMBER (qp, mr, mw, srq, ah)", s)
	}
	v, err := strconv.ParseUint(num, 0, 32)
	if err != nil {
		return ID{}, fmt.Errorf("rdma: ID %q: %w", s, err)
	}
	switch strings.ToLower(typ) {
	case "qp":
		return ID{Type: IDQP, Index: uint32(v)}, nil
	case "mr":
		return ID{Type: IDMR, Index: uint32(v) >> 8, Key: uint8(v), HasKey: true}, nil
	case "mw":
		return ID{Type: IDMW, Index: uint32(v) >> 8, Key: uint8(v), HasKey: true}, nil
	case "srq":
		return ID{Type: IDSRQ, Index: uint32(v)}, nil
	case "ah":
		return ID{Type: IDAH, Index: uint32(v)}, nil
	}
	return ID{}, fmt.Errorf("rdma: ID %q: unknown type %q (qp, mr, mw, srq, ah)", s, typ)
}
