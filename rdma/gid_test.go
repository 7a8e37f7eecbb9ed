// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestPortGIDs(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("class/infiniband_verbs/uverbs1/ibdev", "rxe_mv0\n")
	g := "class/infiniband/rxe_mv0/ports/1/gids/"
	write(g+"0", "fe80:0000:0000:0000:5054:00ff:fe77:0011\n")
	write(g+"1", "0000:0000:0000:0000:0000:ffff:c0a8:4d0b\n")
	write(g+"2", "0000:0000:0000:0000:0000:ffff:c0a8:4d0b\n") // RoCE v1 and v2 share a GID
	write(g+"3", "0000:0000:0000:0000:0000:0000:0000:0000\n")
	got, err := portGIDs(root, "/dev/infiniband/uverbs1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"::ffff:192.168.77.11", "fe80::5054:ff:fe77:11"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	b, err := gidBytes(got)
	if err != nil || len(b) != 32 || b[10] != 0xff || b[15] != 11 || b[16] != 0xfe {
		t.Fatalf("gidBytes: %x, %v", b, err)
	}
	if _, err := gidBytes([]string{"not a gid"}); err == nil {
		t.Fatal("gidBytes took a bad GID")
	}
	if _, err := portGIDs(root, "/dev/infiniband/uverbs7"); err == nil {
		t.Fatal("a missing device has GIDs")
	}
}
