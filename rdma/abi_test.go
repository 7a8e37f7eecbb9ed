// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEncodeCall(t *testing.T) {
	b := encodeCall(methodQueryQP, []attr{{id: attrQP, data: 7}, {id: attrQPInfo, len: 48, data: 0x1122334455667788}})
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
