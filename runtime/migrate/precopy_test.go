// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
)

// A pre-dump's files and its parent link cross as a tar stream; a
// stream whose names leave the directory, or that holds devices, is
// refused.
func TestPreDumpTar(t *testing.T) {
	src := t.TempDir()
	for name, data := range map[string]string{"pages-1.img": strings.Repeat("p", 9000), "pagemap-7.img": "m", "dump.log": "(00.000001) x\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../pre-1", filepath.Join(src, "parent")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeDir(&buf, src); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "tok", "pre-2")
	if err := readDir(bytes.NewReader(buf.Bytes()), dst); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pages-1.img", "pagemap-7.img", "dump.log"} {
		a, _ := os.ReadFile(filepath.Join(src, name))
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: %d bytes, %v; want %d", name, len(b), err, len(a))
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "parent")); err != nil || l != "../pre-1" {
		t.Errorf("parent link %q, %v", l, err)
	}
	if err := readDir(bytes.NewReader(buf.Bytes()), dst); err == nil {
		t.Error("a second pre-dump into the same directory was taken")
	}

	for _, tc := range []struct {
		name string
		hdr  tar.Header
	}{
		{"leaves", tar.Header{Name: "../../etc/x", Typeflag: tar.TypeReg, Mode: 0o600}},
		{"absolute", tar.Header{Name: "/etc/x", Typeflag: tar.TypeReg, Mode: 0o600}},
		{"device", tar.Header{Name: "null", Typeflag: tar.TypeChar, Mode: 0o600}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			if err := tw.WriteHeader(&tc.hdr); err != nil {
				t.Fatal(err)
			}
			tw.Close()
			if err := readDir(&b, filepath.Join(t.TempDir(), "d")); err == nil {
				t.Fatal("taken")
			}
		})
	}
}

// The final checkpoint names the last pre-dump as its parent.
func TestWithParent(t *testing.T) {
	var o options.CheckpointOptions
	if err := withParent("/var/lib/migros/migrate/t/pre-2")(t.Context(), nil, nil, nil, &o); err != nil ||
		o.ParentPath != "/var/lib/migros/migrate/t/pre-2" {
		t.Fatalf("%v, parent %q", err, o.ParentPath)
	}
}

func TestPreCopyTokens(t *testing.T) {
	d := &Destination{}
	for _, tok := range []string{"", "../x", "a/b", ".hidden"} {
		if err := d.DropPreDumps(tok); err == nil {
			t.Errorf("token %q taken", tok)
		}
		if err := d.TakePreDump(PreCopy{Token: tok, Round: 1}, strings.NewReader(""), nil); err == nil {
			t.Errorf("token %q taken", tok)
		}
	}
	if err := d.TakePreDump(PreCopy{Token: "ok", Round: 0}, strings.NewReader(""), nil); err == nil {
		t.Error("round 0 taken")
	}
}
