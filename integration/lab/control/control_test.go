// SPDX-License-Identifier: Apache-2.0

package control

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// pair connects a Client to a Server over an in-memory pipe.
func pair(t *testing.T) *Client {
	t.Helper()
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	srv := &Server{Logf: t.Logf}
	go func() { _ = srv.Serve(ctx, b) }()
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	sess, err := yamux.Client(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{conn: a, sess: sess}
	t.Cleanup(func() {
		c.Close()
		cancel()
	})
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	return c
}

func TestExec(t *testing.T) {
	c := pair(t)
	tests := []struct {
		name       string
		argv       []string
		stdin      string
		wantOut    string
		wantCode   int
		wantStderr string
		wantErr    bool // an error that is not an exit status
	}{
		{name: "stdout", argv: []string{"sh", "-c", "echo hello"}, wantOut: "hello\n"},
		{name: "exit code and stderr", argv: []string{"sh", "-c", "echo oops >&2; exit 3"}, wantCode: 3, wantStderr: "oops"},
		{name: "stdin", argv: []string{"tr", "a-z", "A-Z"}, stdin: "abc", wantOut: "ABC"},
		{name: "not found", argv: []string{"/nonexistent/cmd"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := &Cmd{Argv: tt.argv, Stdout: &out}
			if tt.stdin != "" {
				cmd.Stdin = strings.NewReader(tt.stdin)
			}
			err := c.Run(context.Background(), cmd)
			var ee *ExitError
			switch {
			case tt.wantErr:
				if err == nil || errors.As(err, &ee) {
					t.Fatalf("want a non-exit error, got %v", err)
				}
			case tt.wantCode != 0:
				if !errors.As(err, &ee) || ee.ExitCode != tt.wantCode {
					t.Fatalf("want exit %d, got %v", tt.wantCode, err)
				}
				if !strings.Contains(ee.Stderr, tt.wantStderr) {
					t.Fatalf("stderr %q lacks %q", ee.Stderr, tt.wantStderr)
				}
			case err != nil:
				t.Fatal(err)
			}
			if out.String() != tt.wantOut {
				t.Fatalf("stdout %q, want %q", out.String(), tt.wantOut)
			}
		})
	}
}

func TestCancelKillsProcessGroup(t *testing.T) {
	c := pair(t)
	dir := t.TempDir()
	mark := filepath.Join(dir, "child-alive")
	ctx, cancel := context.WithCancel(context.Background())
	// The shell starts a child that would touch the file after 2 s.
	p, err := c.Start(ctx, &Cmd{Argv: []string{"sh", "-c", "(sleep 2; touch " + mark + ") & sleep 60"}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	cancel()
	if err := p.Wait(); err == nil {
		t.Fatal("cancelled process reported success")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := os.Stat(mark); err == nil {
		t.Fatal("a child of the cancelled command survived")
	}
}

func TestConcurrentStreams(t *testing.T) {
	c := pair(t)
	ctx := context.Background()
	long, err := c.Start(ctx, &Cmd{Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Output(ctx, "echo", "meanwhile")
	if err != nil || out != "meanwhile\n" {
		t.Fatalf("second command while first runs: %q, %v", out, err)
	}
	long.Kill()
}

func TestFiles(t *testing.T) {
	c := pair(t)
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "f")
	data := bytes.Repeat([]byte("0123456789abcdef"), 200000) // 3.2 MB: several frames
	if err := c.WriteFile(ctx, path, bytes.NewReader(data), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v %v", st, err)
	}
	var got bytes.Buffer
	if err := c.ReadFile(ctx, path, &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read back %d bytes, want %d identical", got.Len(), len(data))
	}
	if err := c.ReadFile(ctx, filepath.Join(dir, "missing"), &got); err == nil {
		t.Fatal("reading a missing file succeeded")
	}
	if err := c.WriteFile(ctx, "relative", strings.NewReader("x"), 0); err == nil {
		t.Fatal("relative put succeeded")
	}
}
