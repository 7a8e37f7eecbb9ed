// SPDX-License-Identifier: Apache-2.0

// Package rocev2 encodes and decodes the RoCEv2 packets of the MigrOS
// protocol (docs/protocol.md): the base transport header, the MigrOS
// extended header (MIGETH) and the invariant CRC that covers them, on IPv4.
// Our rdma_rxe builds these packets in the kernel; this package is the Go
// reference for the wire format, used by tools that inject or inspect them.
package rocev2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
)

// UDPPort is RoCEv2's UDP destination port.
const UDPPort = 4791

// Header sizes in bytes.
const (
	IPv4HeaderLen = 20 // without options, as RoCEv2 senders emit it
	UDPHeaderLen  = 8
	BTHLen        = 12
	MigEthLen     = 32
	ICRCLen       = 4
)

// Opcodes used by MigrOS. RESUME and RESUME_ACK lie in the IBTA's
// manufacturer-specific range; the stopped NAK is an ordinary RC ACK.
const (
	OpAcknowledge = 0x11
	OpResume      = 0xe0
	OpResumeAck   = 0xe1
)

// MIGETH constants.
const (
	MigEthMagic   = 0x4d47 // "MG"
	MigEthVersion = 1
)

// MigType says what a MIGETH belongs to.
type MigType uint8

const (
	MigStopped   MigType = 1 // in a stopped NAK
	MigResume    MigType = 2
	MigResumeAck MigType = 3
)

// ErrShort is returned for a buffer too short for the header it should hold.
var ErrShort = errors.New("rocev2: packet too short")

// psnMask and qpnMask keep the 24 bits the wire has room for.
const (
	psnMask = 1<<24 - 1
	qpnMask = 1<<24 - 1
)

// BTH is the InfiniBand base transport header.
type BTH struct {
	Opcode    uint8
	Solicited bool
	MigReq    bool
	PadCount  uint8 // 0..3
	PKey      uint16
	FECN      bool
	BECN      bool
	DestQPN   uint32 // 24 bits
	AckReq    bool
	PSN       uint32 // 24 bits
}

// Append appends the 12-byte header to b.
func (h BTH) Append(b []byte) []byte {
	flags := h.PadCount & 3 << 4 // transport header version 0
	if h.Solicited {
		flags |= 0x80
	}
	if h.MigReq {
		flags |= 0x40
	}
	b = append(b, h.Opcode, flags)
	b = binary.BigEndian.AppendUint16(b, h.PKey)
	qpn := h.DestQPN & qpnMask
	if h.FECN {
		qpn |= 1 << 31
	}
	if h.BECN {
		qpn |= 1 << 30
	}
	b = binary.BigEndian.AppendUint32(b, qpn)
	psn := h.PSN & psnMask
	if h.AckReq {
		psn |= 1 << 31
	}
	return binary.BigEndian.AppendUint32(b, psn)
}

// ParseBTH decodes the header at the start of b.
func ParseBTH(b []byte) (BTH, error) {
	if len(b) < BTHLen {
		return BTH{}, fmt.Errorf("BTH: %w", ErrShort)
	}
	qpn := binary.BigEndian.Uint32(b[4:])
	psn := binary.BigEndian.Uint32(b[8:])
	return BTH{
		Opcode:    b[0],
		Solicited: b[1]&0x80 != 0,
		MigReq:    b[1]&0x40 != 0,
		PadCount:  b[1] >> 4 & 3,
		PKey:      binary.BigEndian.Uint16(b[2:]),
		FECN:      qpn&(1<<31) != 0,
		BECN:      qpn&(1<<30) != 0,
		DestQPN:   qpn & qpnMask,
		AckReq:    psn&(1<<31) != 0,
		PSN:       psn & psnMask,
	}, nil
}

// MigEth is the MigrOS extended transport header.
type MigEth struct {
	Type    MigType
	SrcQPN  uint32 // the sending QP
	RespPSN uint32 // the sender's next expected PSN
	CompPSN uint32 // the sender's oldest unacknowledged PSN
	MSN     uint32
	Token   uint64
}

// Append appends the 32-byte header to b.
func (m MigEth) Append(b []byte) []byte {
	be := binary.BigEndian
	b = be.AppendUint16(b, MigEthMagic)
	b = append(b, MigEthVersion, byte(m.Type))
	b = be.AppendUint32(b, m.SrcQPN&qpnMask)
	b = be.AppendUint32(b, m.RespPSN&psnMask)
	b = be.AppendUint32(b, m.CompPSN&psnMask)
	b = be.AppendUint32(b, m.MSN)
	b = be.AppendUint32(b, 0)
	return be.AppendUint64(b, m.Token)
}

// ParseMigEth decodes the header at the start of b and checks its magic and
// version.
func ParseMigEth(b []byte) (MigEth, error) {
	if len(b) < MigEthLen {
		return MigEth{}, fmt.Errorf("MIGETH: %w", ErrShort)
	}
	be := binary.BigEndian
	if m := be.Uint16(b); m != MigEthMagic {
		return MigEth{}, fmt.Errorf("MIGETH: magic %#04x, want %#04x", m, MigEthMagic)
	}
	if b[2] != MigEthVersion {
		return MigEth{}, fmt.Errorf("MIGETH: version %d, want %d", b[2], MigEthVersion)
	}
	return MigEth{
		Type:    MigType(b[3]),
		SrcQPN:  be.Uint32(b[4:]) & qpnMask,
		RespPSN: be.Uint32(b[8:]) & psnMask,
		CompPSN: be.Uint32(b[12:]) & psnMask,
		MSN:     be.Uint32(b[16:]),
		Token:   be.Uint64(b[24:]),
	}, nil
}

// icrcSeed is the CRC of eight 0xff bytes (the masked local routing header
// that RoCEv2 lacks) from the usual all-ones start; RoCEv2 begins there.
const icrcSeed = 0xdebb20e3

// ICRC computes the invariant CRC of an IPv4 RoCEv2 packet: pkt starts with
// the IPv4 header (no options) and holds everything up to, not including,
// the ICRC. The fields a router may change (IP TOS, TTL and checksum, the UDP
// checksum, the BTH's FECN/BECN/reserved byte) are masked with ones. The
// result is the 32-bit value that goes on the wire little-endian.
func ICRC(pkt []byte) (uint32, error) {
	hdrs := IPv4HeaderLen + UDPHeaderLen + BTHLen
	if len(pkt) < hdrs {
		return 0, fmt.Errorf("ICRC: %w", ErrShort)
	}
	if pkt[0] != 0x45 {
		return 0, fmt.Errorf("ICRC: not an IPv4 header without options (first byte %#02x)", pkt[0])
	}
	masked := make([]byte, hdrs)
	copy(masked, pkt)
	masked[1] = 0xff                            // TOS
	masked[8] = 0xff                            // TTL
	masked[10], masked[11] = 0xff, 0xff         // IP checksum
	masked[IPv4HeaderLen+6] = 0xff              // UDP checksum
	masked[IPv4HeaderLen+7] = 0xff              //
	masked[IPv4HeaderLen+UDPHeaderLen+4] = 0xff // FECN, BECN, reserved
	// Go's crc32 inverts before and after; the seed is a raw register
	// value, and the ICRC is the inverted final register.
	c := crc32.Update(^uint32(icrcSeed), crc32.IEEETable, masked)
	return crc32.Update(c, crc32.IEEETable, pkt[hdrs:]), nil
}

// AppendICRC appends the ICRC of pkt (see ICRC) to it.
func AppendICRC(pkt []byte) ([]byte, error) {
	c, err := ICRC(pkt)
	if err != nil {
		return nil, err
	}
	return binary.LittleEndian.AppendUint32(pkt, c), nil
}

// CheckICRC verifies the ICRC at the end of an IPv4 RoCEv2 packet.
func CheckICRC(pkt []byte) error {
	if len(pkt) < ICRCLen {
		return fmt.Errorf("ICRC: %w", ErrShort)
	}
	n := len(pkt) - ICRCLen
	c, err := ICRC(pkt[:n])
	if err != nil {
		return err
	}
	if got := binary.LittleEndian.Uint32(pkt[n:]); got != c {
		return fmt.Errorf("ICRC: packet has %#08x, computed %#08x", got, c)
	}
	return nil
}

// IPv4 describes the IP and UDP envelope of a packet.
type IPv4 struct {
	Src, Dst netip.Addr
	ID       uint16 // non-zero, or the kernel picks one after the ICRC is made
	SrcPort  uint16
	TTL      uint8
}

// Packet builds a whole IPv4 RoCEv2 packet around the transport headers
// and payload ib (BTH first), with the IP checksum and the ICRC filled in
// and no UDP checksum, as a raw IP socket sends it.
func Packet(env IPv4, ib []byte) ([]byte, error) {
	if !env.Src.Is4() || !env.Dst.Is4() {
		return nil, fmt.Errorf("rocev2: %v -> %v: IPv4 addresses required", env.Src, env.Dst)
	}
	if len(ib) < BTHLen {
		return nil, fmt.Errorf("BTH: %w", ErrShort)
	}
	total := IPv4HeaderLen + UDPHeaderLen + len(ib) + ICRCLen
	if total > 0xffff {
		return nil, fmt.Errorf("rocev2: packet of %d bytes is too long", total)
	}
	ttl := env.TTL
	if ttl == 0 {
		ttl = 64
	}
	be := binary.BigEndian
	p := make([]byte, 0, total)
	p = append(p, 0x45, 0)
	p = be.AppendUint16(p, uint16(total))
	p = be.AppendUint16(p, env.ID)
	p = be.AppendUint16(p, 0x4000) // don't fragment
	p = append(p, ttl, 17, 0, 0)   // UDP, checksum below
	src, dst := env.Src.As4(), env.Dst.As4()
	p = append(p, src[:]...)
	p = append(p, dst[:]...)
	be.PutUint16(p[10:], ipChecksum(p[:IPv4HeaderLen]))
	p = be.AppendUint16(p, env.SrcPort)
	p = be.AppendUint16(p, UDPPort)
	p = be.AppendUint16(p, uint16(total-IPv4HeaderLen))
	p = be.AppendUint16(p, 0) // no UDP checksum
	p = append(p, ib...)
	return AppendICRC(p)
}

func ipChecksum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
