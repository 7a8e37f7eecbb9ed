// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestDecodeGIDEntries(t *testing.T) {
	var b []byte
	for i, g := range []string{
		"fe80::5054:ff:fe77:11",
		"::ffff:192.168.77.11",
		"::ffff:192.168.77.11", // RoCE v1 and v2 share a GID
		"::",
		"fe80::1", // beyond n: not read
	} {
		e := make([]byte, gidEntrySize)
		a := netip.MustParseAddr(g).As16()
		copy(e, a[:])
		e[16] = byte(i) // gid_index
		b = append(b, e...)
	}
	got := decodeGIDEntries(b, 4)
	want := []string{"::ffff:192.168.77.11", "fe80::5054:ff:fe77:11"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	gb, err := gidBytes(got)
	if err != nil || len(gb) != 32 || gb[10] != 0xff || gb[15] != 11 || gb[16] != 0xfe {
		t.Fatalf("gidBytes: %x, %v", gb, err)
	}
	if _, err := gidBytes([]string{"not a gid"}); err == nil {
		t.Fatal("gidBytes took a bad GID")
	}
}
