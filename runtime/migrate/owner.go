// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// A pageStream listens on loopback for the source's CRIU, which runs as
// root; any local process could connect there first. The kernel knows
// whose socket the other end of a loopback connection is:
// /proc/net/tcp lists it with its owner's uid.

// loopbackOwner is the uid that owns the other end of conn, a TCP
// connection over IPv4 loopback accepted in this network namespace, as
// /proc/net/tcp tells.
func loopbackOwner(conn net.Conn) (uint32, error) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return socketOwner(f, conn.RemoteAddr(), conn.LocalAddr())
}

// socketOwner finds in table (the format of /proc/net/tcp) the socket
// bound to local and connected to remote, and returns its owner's uid.
func socketOwner(table io.Reader, local, remote net.Addr) (uint32, error) {
	l, lerr := procAddr(local)
	r, rerr := procAddr(remote)
	if lerr != nil || rerr != nil {
		return 0, fmt.Errorf("socket %v -> %v: not a TCP/IPv4 connection", local, remote)
	}
	s := bufio.NewScanner(table)
	for s.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
		f := strings.Fields(s.Text())
		if len(f) < 8 || f[1] != l || f[2] != r {
			continue
		}
		uid, err := strconv.ParseUint(f[7], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("socket %v -> %v: uid %q: %w", local, remote, f[7], err)
		}
		return uint32(uid), nil
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("socket %v -> %v: not in the kernel's table", local, remote)
}

// procAddr writes a TCP/IPv4 address as /proc/net/tcp does: the address'
// four bytes as one number in the host's order, then the port, in hex.
func procAddr(a net.Addr) (string, error) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil || !ap.Addr().Unmap().Is4() {
		return "", fmt.Errorf("%v: not a TCP/IPv4 address", a)
	}
	ip := ap.Addr().Unmap().As4()
	return fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip[:]), ap.Port()), nil
}
