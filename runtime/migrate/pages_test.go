// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/runtime/agent"
)

// fakePageServer stands for criu page-server: it appends each line that
// comes on fd 3 to pages-1.img in its images directory and answers it;
// "close" ends it, "fail" fails it.
const fakePageServer = `#!/bin/sh
while [ $# -gt 0 ]; do
	case $1 in --images-dir) dir=$2;; -o) log=$2;; esac
	shift
done
while read -r l <&3; do
	if [ "$l" = fail ]; then echo "(00.1) Error (criu/page-xfer.c:1): no room" > "$log"; exit 1; fi
	echo "$l" >> "$dir/pages-1.img"
	echo "ok $l" >&3
	if [ "$l" = close ]; then exit 0; fi
done
exit 2
`

// A dump's pages go from CRIU, through the stream over the agents' TLS
// connection, to the destination's page server and back; a page server
// that fails, a CRIU that never sends, and a parent the destination does
// not have are errors on both ends.
func TestPageStream(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(bin, []byte(fakePageServer), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		lines  []string // CRIU sends, reading each answer
		parent string
		open   string // Open's error, "" for none
		err    string // Wait's and the destination's error, "" for none
	}{
		{name: "pages", lines: []string{"page 1", "page 2", "close"}},
		{name: "on top of a pre-dump", parent: "pre-1", lines: []string{"page 1", "close"}},
		{name: "page server fails", lines: []string{"page 1", "fail"}, err: "no room"},
		{name: "no CRIU", err: "CRIU did not send"},
		{name: "parent missing", parent: "pre-9", open: "412"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			root := t.TempDir()
			if err := os.Mkdir(filepath.Join(root, "pre-1"), 0o700); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(root, "pages")
			d := &Destination{CRIU: bin}
			dest := fakeAgent(t, map[string]http.HandlerFunc{"POST /v1/pages": func(w http.ResponseWriter, r *http.Request) {
				q := r.URL.Query()
				if err := d.servePages(r.Context(), q.Get("token"), dir, q.Get("parent"), r.Body, w); err != nil {
					agent.WriteError(w, &PhaseError{PhaseCheckpoint, err})
				}
			}})
			p, err := openPageStream(ctx, dest, "tok", finalPages, tc.parent, 0)
			if tc.open != "" {
				if err == nil || !strings.Contains(err.Error(), tc.open) {
					t.Fatalf("open: %v, want %q", err, tc.open)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			sent := 0
			if tc.lines != nil {
				conn, err := net.Dial("tcp", p.Addr())
				if err != nil {
					t.Fatal(err)
				}
				in := bufio.NewReader(conn)
				for _, l := range tc.lines {
					fmt.Fprintln(conn, l)
					sent += len(l) + 1
					got, err := in.ReadString('\n')
					if l == "fail" {
						if err != io.EOF {
							t.Errorf("after the page server failed: %q, %v", got, err)
						}
						break
					}
					if got != "ok "+l+"\n" {
						t.Fatalf("sent %q, answered %q, %v", l, got, err)
					}
				}
				conn.Close()
			}
			err = p.Wait(ctx)
			derr := d.pages.take(ctx, "tok", finalPages)
			if tc.name == "no CRIU" {
				// The destination waits for what never comes.
				derr = err
			}
			for _, e := range []error{err, derr} {
				if (e == nil) != (tc.err == "") || (e != nil && !strings.Contains(e.Error(), tc.err)) {
					t.Errorf("error %v, want %q", e, tc.err)
				}
			}
			if tc.err != "" {
				return
			}
			if got := p.sent(); got != int64(sent) {
				t.Errorf("sent %d bytes, want %d", got, sent)
			}
			b, err := os.ReadFile(filepath.Join(dir, "pages-1.img"))
			if want := strings.Join(tc.lines, "\n") + "\n"; err != nil || string(b) != want {
				t.Errorf("pages %q, %v; want %q", b, err, want)
			}
			if l, _ := os.Readlink(filepath.Join(dir, "parent")); tc.parent != "" && l != filepath.Join("..", tc.parent) {
				t.Errorf("parent link %q", l)
			}
		})
	}
}
