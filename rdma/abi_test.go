// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEncodeCall(t *testing.T) {
	b := encodeCall(objMig, methodQueryQP, []attr{{id: attrQP, data: 7}, {id: attrQPInfo, len: 48, data: 0x1122334455667788}})
	le := binary.LittleEndian
	want := []struct {
		name string
		off  int
		got  uint64
		want uint64
	}{
		{"length", 0, uint64(le.Uint16(b[0:])), 24 + 2*16},
		{"object", 2, uint64(le.Uint16(b[2:])), 0x1000},
		{"method", 4, uint64(le.Uint16(b[4:])), 0x1002},
		{"num_attrs", 6, uint64(le.Uint16(b[6:])), 2},
		{"reserved1", 8, le.Uint64(b[8:]), 0},
		{"driver_id", 16, uint64(le.Uint32(b[16:])), 14},
		{"attr0 id", 24, uint64(le.Uint16(b[24:])), 0x1000},
		{"attr0 data", 32, le.Uint64(b[32:]), 7},
		{"attr1 id", 40, uint64(le.Uint16(b[40:])), 0x1002},
		{"attr1 len", 42, uint64(le.Uint16(b[42:])), 48},
		{"attr1 flags", 44, uint64(le.Uint16(b[44:])), 0},
		{"attr1 data", 48, le.Uint64(b[48:]), 0x1122334455667788},
	}
	for _, w := range want {
		if w.got != w.want {
			t.Errorf("%s at %d: %#x, want %#x", w.name, w.off, w.got, w.want)
		}
	}
	if len(b) != 56 {
		t.Fatalf("length %d", len(b))
	}
}

func TestDecodeQPInfo(t *testing.T) {
	b := make([]byte, qpInfoSize)
	le := binary.LittleEndian
	for i, v := range []uint32{17, 18, 3, 2, 1, 100, 90, 200, 5} {
		le.PutUint32(b[4*i:], v)
	}
	le.PutUint64(b[40:], 30123)
	got := decodeQPInfo(b)
	want := QPInfo{QPN: 17, DestQPN: 18, QPState: 3, Mig: MigPaused, Resuming: true, ReqPSN: 100, CompPSN: 90, RespPSN: 200, RespMSN: 5, PausedMS: 30123}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	refs := decodeQPRefs([]byte{1, 0, 0, 0, 0x11, 0, 0, 0, 3, 0, 0, 0, 0x12, 0, 0, 0}, 2)
	if len(refs) != 2 || refs[0] != (QPRef{1, 0x11}) || refs[1] != (QPRef{3, 0x12}) {
		t.Fatalf("refs %+v", refs)
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		errno unix.Errno
		want  error
	}{
		{unix.EPROTONOSUPPORT, ErrNotSupported},
		{unix.EOPNOTSUPP, ErrNotSupported},
		{unix.EPERM, ErrPermission},
		{unix.ENOENT, ErrNoObject},
		{unix.EINVAL, ErrState},
		{unix.EBUSY, ErrState},
	}
	for _, tt := range tests {
		err := error(&Error{Op: "stop", Path: "/dev/infiniband/uverbs0", Errno: tt.errno})
		if !errors.Is(err, tt.want) {
			t.Errorf("%v: not %v", tt.errno, tt.want)
		}
		if !errors.Is(err, tt.errno) {
			t.Errorf("%v: errno lost", tt.errno)
		}
	}
	if err := error(&Error{Errno: unix.EIO}); !errors.Is(err, unix.EIO) || errors.Is(err, ErrState) {
		t.Errorf("EIO mapped to %v", err)
	}
}

func TestMigStateText(t *testing.T) {
	for _, s := range []MigState{MigNone, MigStopped, MigPaused} {
		b, _ := s.MarshalText()
		var got MigState
		if err := got.UnmarshalText(b); err != nil || got != s {
			t.Errorf("%v: round trip gave %v, %v", s, got, err)
		}
	}
	var s MigState
	if err := s.UnmarshalText([]byte("frozen")); err == nil {
		t.Error("accepted an unknown state")
	}
}

func TestEncodeIDs(t *testing.T) {
	b := encodeIDs([]ID{{Type: IDQP, Index: 0x1234}, {Type: IDMR, Index: 7, Key: 0x5a, HasKey: true}})
	le := binary.LittleEndian
	want := []uint32{1, 0x1234, 0, 0, 2, 7, 0x5a, 1}
	if len(b) != len(want)*4 {
		t.Fatalf("%d bytes", len(b))
	}
	for i, w := range want {
		if got := le.Uint32(b[4*i:]); got != w {
			t.Errorf("word %d: %#x, want %#x", i, got, w)
		}
	}
}

func TestDecodeIDStatus(t *testing.T) {
	ids := []ID{{Type: IDQP, Index: 17}, {Type: IDMR, Index: 2, Key: 0xfa, HasKey: true}, {Type: IDAH, Index: 1 << 30}, {Type: 9, Index: 1}}
	status := make([]byte, 16)
	le := binary.LittleEndian
	le.PutUint32(status[4:], uint32(unix.EBUSY))
	le.PutUint32(status[8:], uint32(unix.ERANGE))
	le.PutUint32(status[12:], uint32(unix.EINVAL))
	errs := decodeIDStatus(ids, status)
	tests := []struct {
		err  error
		is   error
		text string
	}{
		{errs[0], nil, ""},
		{errs[1], ErrIDTaken, "MR 0x2fa (key 0xfa): ID already taken"},
		{errs[2], ErrIDRange, "AH 0x40000000: ID out of"},
		{errs[3], unix.EINVAL, "IDType(9) 0x1"},
	}
	for i, tt := range tests {
		if tt.is == nil {
			if tt.err != nil {
				t.Errorf("%d: %v, want nil", i, tt.err)
			}
			continue
		}
		if !errors.Is(tt.err, tt.is) || !strings.Contains(tt.err.Error(), tt.text) {
			t.Errorf("%d: %v, want %v saying %q", i, tt.err, tt.is, tt.text)
		}
	}
}

func TestParseID(t *testing.T) {
	tests := []struct {
		in   string
		want ID
		err  string
	}{
		{"qp:17", ID{Type: IDQP, Index: 17}, ""},
		{"QP:0x11", ID{Type: IDQP, Index: 17}, ""},
		{"mr:0x2fa", ID{Type: IDMR, Index: 2, Key: 0xfa, HasKey: true}, ""},
		{"mw:0x80001ab", ID{Type: IDMW, Index: 0x80001, Key: 0xab, HasKey: true}, ""},
		{"srq:0x20001", ID{Type: IDSRQ, Index: 0x20001}, ""},
		{"ah:3", ID{Type: IDAH, Index: 3}, ""},
		{"17", ID{}, "want TYPE:NUMBER"},
		{"cq:1", ID{}, "unknown type"},
		{"qp:x", ID{}, "invalid syntax"},
		{"qp:0x100000000", ID{}, "out of range"},
	}
	for _, tt := range tests {
		got, err := ParseID(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %v, want error saying %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if got.String() == "" {
			t.Errorf("%q: empty String", tt.in)
		}
	}
}

// SHARE_CRED stands alone in the task's memory: one inline attribute with
// the fd, nothing pointed to.
func TestShareCredCall(t *testing.T) {
	req, b := ShareCredCall(9)
	le := binary.LittleEndian
	if req != 0xc0181b01 {
		t.Errorf("request %#x", req)
	}
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"length", uint64(le.Uint16(b[0:])), 40},
		{"object", uint64(le.Uint16(b[2:])), 0x1000},
		{"method", uint64(le.Uint16(b[4:])), 0x1006},
		{"num_attrs", uint64(le.Uint16(b[6:])), 1},
		{"attr id", uint64(le.Uint16(b[24:])), 0x1011},
		{"attr len", uint64(le.Uint16(b[26:])), 4},
		{"attr data (inline fd)", le.Uint64(b[32:]), 9},
	} {
		if c.got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestRelocatableCalls(t *testing.T) {
	le := binary.LittleEndian
	const base = 0x7f0000001000
	d := QPDump{QPN: 0x11, SQPSN: 7}
	res := []RespRes{{FirstPSN: 3}}
	c, err := RestoreQPCall(QPObject{Handle: 5, QPDump: d, RespRes: res}, []string{"::ffff:192.168.77.11"})
	if err != nil || c.Req != verbsIoctl {
		t.Fatalf("RestoreQPCall: %#x, %v", c.Req, err)
	}
	if c.Name() != "restore QP 5" {
		t.Errorf("named %q", c.Name())
	}
	b := laidOut(c, base)
	if len(b) != c.Size {
		t.Fatalf("laid out %d bytes, said %d", len(b), c.Size)
	}
	want := map[uint16][]byte{attrDump: encode(d), attrRespRes: encode(res), attrProgress: encode(RespProgress{})}
	gid, _ := gidBytes([]string{"::ffff:192.168.77.11"})
	want[attrOldGIDs] = gid
	n := int(le.Uint16(b[6:]))
	if le.Uint16(b[0:]) != uint16(hdrSize+attrSize*n) || le.Uint16(b[4:]) != methodRestoreQP || n != 5 {
		t.Fatalf("header % x", b[:hdrSize])
	}
	for i := 0; i < n; i++ {
		a := b[hdrSize+attrSize*i:]
		id, l, data := le.Uint16(a), int(le.Uint16(a[2:])), le.Uint64(a[8:])
		if id == attrQP {
			if data != 5 {
				t.Errorf("QP handle attribute %d, want 5 (inline)", data)
			}
			continue
		}
		off := int(data - base)
		if data < base || off%8 != 0 || off+l > c.Size || !bytes.Equal(b[off:off+l], want[id]) {
			t.Errorf("attribute %#x: %d bytes at %#x, not its buffer", id, l, data)
		}
		delete(want, id)
	}
	if len(want) != 0 {
		t.Errorf("attributes missing: %v", want)
	}
}

// TestRelocatedProgress checks RESTORE_QP's progress laid out for
// another address: the held requests' struct rxe_mig_buf points to their
// copy in the call, not to this process' buffer.
func TestRelocatedProgress(t *testing.T) {
	le := binary.LittleEndian
	const base = 0x7f0000002000
	held := bytes.Repeat([]byte{0xab}, 40)
	wqe := bytes.Repeat([]byte{0xcd}, 24)
	p := RespProgress{HeldCount: 1, HeldBytes: uint32(len(held))}
	if _, err := RestoreQPCall(QPObject{Handle: 3, Progress: RespProgress{HeldBytes: 1}}, nil); err == nil {
		t.Error("a progress record that counts held bytes it does not have was laid out")
	}
	c, err := RestoreQPCall(QPObject{Handle: 3, Progress: p, SRQWQE: wqe, Held: held}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := laidOut(c, base)
	if len(b) != c.Size || le.Uint16(b[4:]) != methodRestoreQP {
		t.Fatalf("laid out %d bytes (said %d), method %d", len(b), c.Size, le.Uint16(b[4:]))
	}
	at := func(addr uint64, n int) []byte {
		off := addr - base
		if addr < base || off+uint64(n) > uint64(len(b)) {
			t.Fatalf("%d bytes at %#x are outside the call", n, addr)
		}
		return b[off : off+uint64(n)]
	}
	got := map[uint16][]byte{}
	for i := 0; i < int(le.Uint16(b[6:])); i++ {
		a := b[hdrSize+attrSize*i:]
		id, l, data := le.Uint16(a), int(le.Uint16(a[2:])), le.Uint64(a[8:])
		if id == attrQP {
			got[id] = a[8:16]
			continue
		}
		got[id] = at(data, l)
	}
	if h := got[attrQP]; h == nil || le.Uint64(h) != 3 {
		t.Errorf("QP handle attribute % x", h)
	}
	if !bytes.Equal(got[attrProgress], encode(p)) || !bytes.Equal(got[attrSRQWQE], wqe) {
		t.Errorf("progress % x, SRQ WQE % x", got[attrProgress], got[attrSRQWQE])
	}
	hb := got[attrHeld]
	if len(hb) != 16 || le.Uint32(hb[8:]) != uint32(len(held)) {
		t.Fatalf("held buffer % x", hb)
	}
	if copied := at(le.Uint64(hb), len(held)); !bytes.Equal(copied, held) {
		t.Errorf("the held buffer points to % x", copied)
	}

	if c, err := RestoreEventsCall(ObjQP, 3, Events{}); err != nil || c.Size != 0 {
		t.Errorf("zero events: a call of %d bytes, %v", c.Size, err)
	}
	ev := Events{AsyncReported: 2}
	c, err = RestoreEventsCall(ObjQP, 3, ev)
	if err != nil || c.Size == 0 || c.Name() != "restore events of QP 3" {
		t.Fatalf("events call of %d bytes named %q: %v", c.Size, c.Name(), err)
	}
	if b := laidOut(c, base); le.Uint16(b[4:]) != methodRestoreEvents || !bytes.Contains(b, encode(ev)) {
		t.Errorf("events call % x", b)
	}
}

// laidOut is c laid out for address base.
func laidOut(c IoctlCall, base uint64) []byte {
	b := make([]byte, c.Size)
	c.Layout(base, b)
	return b
}
