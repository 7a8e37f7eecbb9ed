// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma/rocev2"
)

// forge sends one hand-made MigrOS packet (RESUME or RESUME_ACK) from a raw
// IP socket: the security tests play an attacker on a third host with it.
func forge(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("forge", flag.ExitOnError)
	to := fs.String("to", "", "destination IPv4 address (the attacked host)")
	from := fs.String("from", "", "source IPv4 address (default: this host's route to --to)")
	typ := fs.String("type", "resume", "resume or resume-ack")
	qpn := fs.Uint("qpn", 0, "destination QPN (the attacked QP)")
	srcQPN := fs.Uint("src-qpn", 0, "MIGETH source QPN (the QP to impersonate)")
	psn := fs.Uint("psn", 0, "MIGETH resp_psn and comp_psn, and the BTH PSN")
	token := fs.Uint64("token", 0, "MIGETH token")
	badICRC := fs.Bool("bad-icrc", false, "send a wrong ICRC")
	fs.Parse(args)

	dst, err := netip.ParseAddr(*to)
	if err != nil || !dst.Is4() {
		return fmt.Errorf("--to %q: an IPv4 address is required", *to)
	}
	if *qpn == 0 || *srcQPN == 0 {
		return errors.New("--qpn and --src-qpn are required")
	}
	op, mt := uint8(rocev2.OpResume), rocev2.MigResume
	switch *typ {
	case "resume":
	case "resume-ack":
		op, mt = rocev2.OpResumeAck, rocev2.MigResumeAck
	default:
		return fmt.Errorf("--type %q: want resume or resume-ack", *typ)
	}
	src, err := sourceFor(ctx, dst, *from)
	if err != nil {
		return err
	}

	ib := rocev2.BTH{Opcode: op, PKey: 0xffff, DestQPN: uint32(*qpn), PSN: uint32(*psn)}.Append(nil)
	ib = rocev2.MigEth{Type: mt, SrcQPN: uint32(*srcQPN), RespPSN: uint32(*psn), CompPSN: uint32(*psn), Token: *token}.Append(ib)
	pkt, err := rocev2.Packet(rocev2.IPv4{
		Src: src, Dst: dst,
		ID:      uint16(rand.N(0xffff) + 1),
		SrcPort: uint16(0xc000 + rand.N(0x4000)),
	}, ib)
	if err != nil {
		return err
	}
	if *badICRC {
		pkt[len(pkt)-1] ^= 0xff
	}

	// IPPROTO_RAW implies IP_HDRINCL: the kernel sends our header as is
	// (it fills in only the checksum, which the ICRC does not cover).
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket (root required): %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return fmt.Errorf("send to %v: %w", dst, err)
	}
	fmt.Printf("sent %s %v -> %v qpn %#x src_qpn %#x psn %#x token %#x (%d bytes)\n",
		*typ, src, dst, *qpn, *srcQPN, *psn, *token, len(pkt))
	return nil
}

// sourceFor returns from, or the address this host sends to dst from.
func sourceFor(ctx context.Context, dst netip.Addr, from string) (netip.Addr, error) {
	if from != "" {
		a, err := netip.ParseAddr(from)
		if err != nil || !a.Is4() {
			return netip.Addr{}, fmt.Errorf("--from %q: an IPv4 address is required", from)
		}
		return a, nil
	}
	// A connected UDP socket picks the route without sending anything.
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp4", netip.AddrPortFrom(dst, rocev2.UDPPort).String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to %v: %w", dst, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}
