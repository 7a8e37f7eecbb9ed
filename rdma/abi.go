// SPDX-License-Identifier: Apache-2.0

// Package rdma speaks the MigrOS control interface of our rdma_rxe: uverbs
// methods in rxe's driver namespace (kernel/patches, rxe_mig_abi.h), called
// with RDMA_VERBS_IOCTL on a process' uverbs file. It stops a process' QPs
// for migration, resumes them, and reports their state. Pure Go: no cgo.
package rdma

import (
	"encoding/binary"
	"fmt"
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

// rxe_mig_abi.h
const (
	objMig = nsDriver

	methodStop    = nsDriver + 0
	methodResume  = nsDriver + 1
	methodQueryQP = nsDriver + 2
	methodListQPs = nsDriver + 3

	attrQP     = nsDriver + 0
	attrCount  = nsDriver + 1
	attrQPInfo = nsDriver + 2
	attrQPList = nsDriver + 3

	qpInfoSize = 48
	qpRefSize  = 8
)

// attr is one ib_uverbs_attr.
type attr struct {
	id   uint16
	len  uint16
	data uint64 // handle, or address of a buffer
}

// encodeCall lays out an ib_uverbs_ioctl_hdr and its attributes.
func encodeCall(method uint16, attrs []attr) []byte {
	b := make([]byte, hdrSize+attrSize*len(attrs))
	le := binary.LittleEndian
	le.PutUint16(b[0:], uint16(len(b)))
	le.PutUint16(b[2:], objMig)
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
