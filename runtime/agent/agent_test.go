// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var loopback = []net.IP{net.ParseIP("127.0.0.1")}

// pki makes a CA with hosts a and b (on loopback) in a new directory.
func pki(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := Init(dir, []Host{{"a", loopback}, {"b", loopback}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	return dir
}

func identity(t *testing.T, dir string) *Identity {
	t.Helper()
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve runs an agent with identity id on loopback; it returns the
// address.
func serve(t *testing.T, id *Identity) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := &Server{ID: id, Info: func() Info { return Info{Host: "a", RxeVersion: "18-test"} }}
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return l.Addr().String()
}

// Agents of one CA talk; a client without a certificate, or with one of
// another CA, is refused; a client does not talk to an agent of another
// CA.
func TestMutualTLS(t *testing.T) {
	dir := pki(t)
	addr := serve(t, identity(t, filepath.Join(dir, "a")))
	ctx := context.Background()

	info, err := NewClient(identity(t, filepath.Join(dir, "b")), addr).Info(ctx)
	if err != nil || info.Host != "a" || info.RxeVersion != "18-test" {
		t.Fatalf("b asking a: %+v, %v", info, err)
	}

	other := pki(t)
	ours := identity(t, filepath.Join(dir, "b"))
	theirs := identity(t, filepath.Join(other, "b"))
	for _, tc := range []struct {
		name string
		tls  *tls.Config
		want string // in the error
	}{
		// Trusts the agent, has no certificate.
		{"no certificate", &tls.Config{RootCAs: ours.cas, MinVersion: tls.VersionTLS13}, "certificate required"},
		// Trusts the agent, presents a certificate of another CA.
		{"another CA's certificate", &tls.Config{RootCAs: ours.cas, Certificates: []tls.Certificate{theirs.cert},
			MinVersion: tls.VersionTLS13}, "unknown certificate authority"},
		// An agent of another CA: the client refuses it.
		{"another CA's agent", theirs.ClientTLS(), "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Client{base: "https://" + addr, http: &http.Client{Transport: &http.Transport{TLSClientConfig: tc.tls}}}
			_, err := c.Info(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

// A second Init keeps the CA: hosts added later trust the first ones.
func TestInitAddsHosts(t *testing.T) {
	dir := pki(t)
	if err := Init(dir, []Host{{"c", loopback}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, identity(t, filepath.Join(dir, "a")))
	if _, err := NewClient(identity(t, filepath.Join(dir, "c")), addr).Info(context.Background()); err != nil {
		t.Fatalf("c, added later, asking a: %v", err)
	}
	for _, f := range []string{CAFile, CertFile, KeyFile} {
		if _, err := os.Stat(filepath.Join(dir, "c", f)); err != nil {
			t.Error(err)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "c", KeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v; want mode 0600", st, err)
	}
	for _, bad := range []Host{{"", loopback}, {"../x", loopback}} {
		if err := Init(dir, []Host{bad}, time.Hour); err == nil {
			t.Errorf("host name %q accepted", bad.Name)
		}
	}
}

// A Duplex carries both ways at once: the handler answers each line as
// it comes, before the client has sent the rest, and a count at the end.
func TestDuplex(t *testing.T) {
	dir := pki(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{ID: identity(t, filepath.Join(dir, "a")), Info: HostInfo, Routes: map[string]http.HandlerFunc{
		"POST /v1/upper": func(w http.ResponseWriter, r *http.Request) {
			out, err := DuplexAnswer(w)
			if err != nil {
				t.Error(err)
				return
			}
			n := 0
			for sc := bufio.NewScanner(r.Body); sc.Scan(); n++ {
				fmt.Fprintln(out, strings.ToUpper(sc.Text()))
			}
			fmt.Fprintf(out, "%d lines\n", n)
		},
	}}
	go s.Serve(ctx, l)

	d, err := NewClient(identity(t, filepath.Join(dir, "b")), l.Addr().String()).Open(ctx, "/v1/upper", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	in := bufio.NewReader(d)
	for _, line := range []string{"one", "two"} {
		fmt.Fprintln(d, line)
		got, err := in.ReadString('\n')
		if err != nil || got != strings.ToUpper(line)+"\n" {
			t.Fatalf("sent %q, read %q, %v", line, got, err)
		}
	}
	if err := d.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(in); err != nil || string(rest) != "2 lines\n" {
		t.Fatalf("after the end: %q, %v", rest, err)
	}
}

// Open of a path the agent does not serve is its error.
func TestDuplexRefused(t *testing.T) {
	dir := pki(t)
	addr := serve(t, identity(t, filepath.Join(dir, "a")))
	_, err := NewClient(identity(t, filepath.Join(dir, "b")), addr).Open(context.Background(), "/v1/nothing", nil)
	var se *StatusError
	if !errors.As(err, &se) || !strings.Contains(se.Status, "404") {
		t.Fatalf("Open of an unknown path: %v", err)
	}
}
