// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// A page server request is taken once, by the container it names.
func TestPageServerRequest(t *testing.T) {
	root := t.TempDir()
	ps := PageServer{Address: "127.0.0.1:41000", Dir: "/var/lib/migros/migrate/t/pages"}
	remove, err := SetPageServer(root, "default", "c1", ps)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := TakePageServer(root, "default", "c2"); err != nil || got != nil {
		t.Fatalf("another container's: %+v, %v", got, err)
	}
	if got, err := TakePageServer(root, "default", "c1"); err != nil || got == nil || *got != ps {
		t.Fatalf("took %+v, %v; want %+v", got, err, ps)
	}
	if got, err := TakePageServer(root, "default", "c1"); err != nil || got != nil {
		t.Fatalf("taken twice: %+v, %v", got, err)
	}
	remove() // taken already: nothing to withdraw

	if _, err := SetPageServer(root, "default", "c1", ps); err != nil {
		t.Fatal(err)
	}
	// Withdrawn before a checkpoint took it.
	remove, _ = SetPageServer(root, "default", "c1", ps)
	remove()
	if got, _ := TakePageServer(root, "default", "c1"); got != nil {
		t.Fatalf("withdrawn, yet taken: %+v", got)
	}

	for _, tc := range []struct {
		ns, id string
		ps     PageServer
	}{
		{"default", "../x", ps},
		{"", "c", ps},
		{"a/b", "c", ps},
		{"default", "c", PageServer{Address: "nohostport", Dir: ps.Dir}},
		{"default", "c", PageServer{Address: ps.Address, Dir: "relative"}},
	} {
		if _, err := SetPageServer(root, tc.ns, tc.id, tc.ps); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q/%q %+v: %v", tc.ns, tc.id, tc.ps, err)
		}
	}
}

func TestPageServerCRIUConfig(t *testing.T) {
	conf, err := PageServer{Address: "127.0.0.1:41000"}.CRIUConfig()
	if want := "page-server\naddress 127.0.0.1\nport 41000\n"; err != nil || conf != want {
		t.Fatalf("%q, %v; want %q", conf, err, want)
	}
}

// A checkpoint restored here gets links to its page images, which its
// PagesLink leads to; anything else there is left out.
func TestLinkPages(t *testing.T) {
	write := func(t *testing.T, dir string, names ...string) {
		t.Helper()
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		pages  []string // in the page server's directory; nil: none there
		own    []string // the checkpoint's own images
		linked []string
		err    string
	}{
		{name: "pages", pages: []string{"pagemap-1.img", "pages-1.img", "pagemap-shmem-9.img", "page-server.log"},
			own: []string{"core-1.img"}, linked: []string{"pagemap-1.img", "pages-1.img", "pagemap-shmem-9.img"}},
		{name: "not here", err: "not on this host"},
		{name: "none", pages: []string{"page-server.log"}, err: "no page image"},
		{name: "the checkpoint has its own", pages: []string{"pagemap-1.img"}, own: []string{"pagemap-1.img"}, err: "file exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ckpt, pages := t.TempDir(), filepath.Join(t.TempDir(), "pages")
			write(t, ckpt, tc.own...)
			if tc.pages != nil {
				if err := os.Mkdir(pages, 0o700); err != nil {
					t.Fatal(err)
				}
				write(t, pages, tc.pages...)
			}
			if err := os.Symlink(pages, filepath.Join(ckpt, PagesLink)); err != nil {
				t.Fatal(err)
			}
			err := LinkPages(ckpt)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("%v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range tc.linked {
				if b, err := os.ReadFile(filepath.Join(ckpt, n)); err != nil || string(b) != n {
					t.Errorf("%s: %q, %v", n, b, err)
				}
			}
			if _, err := os.Lstat(filepath.Join(ckpt, "page-server.log")); err == nil {
				t.Error("the page server's log was linked")
			}
		})
	}
	if err := LinkPages(t.TempDir()); err != nil {
		t.Errorf("a checkpoint with its pages: %v", err)
	}
}
