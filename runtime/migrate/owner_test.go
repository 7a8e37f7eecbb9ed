// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSocketOwner(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:9C41 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C41 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D433 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:D435 0100007F:9C41 01 00000000:00000000 00:00000000 00000000   bad        0 1004 1 0000000000000000 20 4 30 10 -1
`
	listener := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0x9C41}
	for _, tc := range []struct {
		name   string
		client net.Addr
		uid    uint32
		err    string
	}{
		{"another user's", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0xD431}, 1000, ""},
		{"root's", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0xD433}, 0, ""},
		{"not in the table", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0xD437}, 0, "not in the kernel's table"},
		{"a bad uid", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0xD435}, 0, `uid "bad"`},
		{"IPv6", &net.TCPAddr{IP: net.IPv6loopback, Port: 0xD431}, 0, "not a TCP/IPv4 connection"},
		{"a Unix socket", &net.UnixAddr{Name: "/run/x", Net: "unix"}, 0, "not a TCP/IPv4 connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid, err := socketOwner(strings.NewReader(table), tc.client, listener)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %d, %v; want an error with %q", uid, err, tc.err)
				}
				return
			}
			if err != nil || uid != tc.uid {
				t.Fatalf("got %d, %v; want %d", uid, err, tc.uid)
			}
		})
	}
}

// The kernel's own table names this process' user as the owner of its
// end of a loopback connection.
func TestLoopbackOwner(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if uid, err := loopbackOwner(s); err != nil || uid != uint32(os.Geteuid()) {
		t.Fatalf("owner %d, %v; want %d", uid, err, os.Geteuid())
	}
}

// A page stream takes CRIU's connection even when another user's process
// connected first; that one is closed.
func TestPageStreamTakesOnlyItsUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to connect as another user")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pageStream{ln: ln}
	stranger := dialAs(t, 65534, ln.Addr().(*net.TCPAddr))
	defer stranger.Close()
	criu, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer criu.Close()
	got, err := p.accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if got.RemoteAddr().String() != criu.LocalAddr().String() {
		t.Fatalf("took the connection from %v, want %v", got.RemoteAddr(), criu.LocalAddr())
	}
	// The stranger's was closed.
	if n, err := stranger.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the stranger read %d bytes", n)
	}
	// And nobody else gets in.
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the listener still takes connections")
	}
}

// dialAs connects to addr from a socket that user uid owns: made on a
// thread whose filesystem uid (which a new socket takes) is uid, a
// thread that ends with its goroutine.
func dialAs(t *testing.T, uid int, addr *net.TCPAddr) net.Conn {
	t.Helper()
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits
		unix.Setfsuid(uid)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			sa := &unix.SockaddrInet4{Port: addr.Port}
			copy(sa.Addr[:], addr.IP.To4())
			if err = unix.Connect(fd, sa); err != nil {
				unix.Close(fd)
			}
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	f := os.NewFile(uintptr(r.fd), "stranger")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
