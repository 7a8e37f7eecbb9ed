// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"encoding/binary"
	"testing"
)

// The Go mirrors of the dump structs must have the kernel's sizes
// (rxe_mig_abi.h, measured with offsetof on x86-64).
func TestDumpLayouts(t *testing.T) {
	for _, tt := range []struct {
		v    any
		size int
	}{
		{Queue{}, 32}, {AV{}, 32}, {QPDump{}, 264}, {RespRes{}, 64},
		{CQDump{}, 48}, {SRQDump{}, 64}, {MRDump{}, 40}, {MWDump{}, 48}, {AHDump{}, 48},
	} {
		if got := binary.Size(tt.v); got != tt.size {
			t.Errorf("%T is %d bytes, kernel's is %d", tt.v, got, tt.size)
		}
	}
}

// Fields land at the kernel's offsets.
func TestDecodeQPDump(t *testing.T) {
	b := make([]byte, 264)
	le := binary.LittleEndian
	le.PutUint64(b[0:], 0xdeadbeef) // user_handle
	le.PutUint32(b[8:], 0x11)       // qpn
	le.PutUint32(b[56:], 3)         // qp_state
	le.PutUint16(b[84:], 0)         // pkey_index
	b[86] = 1                       // port_num
	b[92] = 7                       // rnr_retry
	b[96] = 0xfe                    // av.dgid[0]
	b[96+20] = 1                    // av.sgid_index
	b[96+25] = 0x52                 // av.dmac[0]
	le.PutUint32(b[128:], 0x123456) // req_psn
	le.PutUint32(b[184:], 1)        // mig_state
	le.PutUint64(b[192:], 0x5eed)   // mig_token
	le.PutUint64(b[200:], 0x3000)   // sq.offset
	le.PutUint64(b[208:], 0x21000)  // sq.buf_size
	le.PutUint32(b[224:], 5)        // sq.index
	le.PutUint64(b[232:], 0x5000)   // rq.offset
	var d QPDump
	if err := decode(b, &d); err != nil {
		t.Fatal(err)
	}
	want := QPDump{UserHandle: 0xdeadbeef, QPN: 0x11, QPState: 3, PortNum: 1, RNRRetry: 7, ReqPSN: 0x123456,
		Mig: MigStopped, MigToken: 0x5eed, SQ: Queue{Offset: 0x3000, BufSize: 0x21000, Index: 5}, RQ: Queue{Offset: 0x5000}}
	want.AV.DGID[0], want.AV.SGIDIndex, want.AV.DMAC[0] = 0xfe, 1, 0x52
	if d != want {
		t.Fatalf("got  %+v\nwant %+v", d, want)
	}
	if err := decode(b[:263], &d); err == nil {
		t.Error("short dump decoded")
	}
}

// encode is decode's inverse.
func TestEncodeDump(t *testing.T) {
	d := QPDump{UserHandle: 1, QPN: 0x11, Mig: MigStopped, MigToken: 7, SQ: Queue{Index: 3}}
	d.AV.DMAC[5] = 9
	b := encode(d)
	var back QPDump
	if err := decode(b, &back); err != nil || back != d {
		t.Fatalf("%+v, %v", back, err)
	}
	res := []RespRes{{Type: 1, RKey: 2}, {Type: 3, VA: 4}}
	if len(encode(res)) != 128 {
		t.Fatalf("two resources encode to %d bytes", len(encode(res)))
	}
}
