// SPDX-License-Identifier: Apache-2.0

package rocev2

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// cnpCapture is a RoCEv2 congestion notification packet sent by a
// ConnectX-4 Lx NIC, IP header onwards, ICRC last (a public capture; hardware
// computed its ICRC, so it checks our ICRC against an independent sender).
const cnpCapture = "45c2003c718c400040119161" + "0a0011010a001201" + // IPv4
	"000012b700280000" + // UDP, no checksum
	"8100ffff4000011800000000" + // BTH: CNP, BECN, dest QPN 0x118
	"00000000000000000000000000000000" + // CNP padding
	"82fd002a" // ICRC

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestICRCOfHardwareCapture(t *testing.T) {
	pkt := mustHex(t, cnpCapture)
	if err := CheckICRC(pkt); err != nil {
		t.Fatal(err)
	}
	bth, err := ParseBTH(pkt[IPv4HeaderLen+UDPHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	if want := (BTH{Opcode: 0x81, PKey: 0xffff, BECN: true, DestQPN: 0x118}); bth != want {
		t.Errorf("BTH %+v, want %+v", bth, want)
	}
}

// Routers may rewrite TOS, TTL, checksums and congestion bits: the ICRC
// must not change. Anything else must change it.
func TestICRCMasksVariantFields(t *testing.T) {
	orig := mustHex(t, cnpCapture)
	for _, tt := range []struct {
		name    string
		off     int
		variant bool
	}{
		{"IP TOS", 1, true},
		{"IP TTL", 8, true},
		{"IP checksum", 10, true},
		{"UDP checksum", 27, true},
		{"BTH FECN/BECN byte", 32, true},
		{"IP ID", 5, false},
		{"IP source", 12, false},
		{"UDP source port", 21, false},
		{"BTH opcode", 28, false},
		{"BTH dest QPN", 35, false},
		{"BTH PSN", 39, false},
		{"payload", 45, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pkt := append([]byte(nil), orig...)
			pkt[tt.off] ^= 0x5a
			err := CheckICRC(pkt)
			if tt.variant && err != nil {
				t.Errorf("changing byte %d broke the ICRC: %v", tt.off, err)
			}
			if !tt.variant && err == nil {
				t.Errorf("changing byte %d left the ICRC valid", tt.off)
			}
		})
	}
}

func TestHeadersRoundTrip(t *testing.T) {
	bths := []BTH{
		{Opcode: OpResume, PKey: 0xffff, DestQPN: 0x11, PSN: 0xabcdef},
		{Opcode: 0x04, Solicited: true, MigReq: true, PadCount: 3, PKey: 0x8001, FECN: true, DestQPN: 0xffffff, AckReq: true},
	}
	for _, h := range bths {
		b := h.Append(nil)
		if len(b) != BTHLen {
			t.Fatalf("BTH is %d bytes", len(b))
		}
		got, err := ParseBTH(b)
		if err != nil || got != h {
			t.Errorf("BTH %+v came back as %+v, %v", h, got, err)
		}
	}
	m := MigEth{Type: MigResume, SrcQPN: 0x12, RespPSN: 0x345678, CompPSN: 0x345670, MSN: 9, Token: 0x0123456789abcdef}
	b := m.Append(nil)
	if len(b) != MigEthLen {
		t.Fatalf("MIGETH is %d bytes", len(b))
	}
	if want := "4d47010200000012003456780034567000000009000000000123456789abcdef"; hex.EncodeToString(b) != want {
		t.Errorf("MIGETH %x, want %s (docs/protocol.md)", b, want)
	}
	got, err := ParseMigEth(b)
	if err != nil || got != m {
		t.Errorf("MIGETH %+v came back as %+v, %v", m, got, err)
	}
}

func TestParseErrors(t *testing.T) {
	good := MigEth{Type: MigResume}.Append(nil)
	badMagic := append([]byte{0x47, 0x4d}, good[2:]...)
	badVersion := append(append([]byte(nil), good[:2]...), append([]byte{2}, good[3:]...)...)
	for _, tt := range []struct {
		name string
		err  error
		msg  string
	}{
		{"short BTH", func() error { _, err := ParseBTH(make([]byte, 11)); return err }(), "too short"},
		{"short MIGETH", func() error { _, err := ParseMigEth(good[:31]); return err }(), "too short"},
		{"magic", func() error { _, err := ParseMigEth(badMagic); return err }(), "magic"},
		{"version", func() error { _, err := ParseMigEth(badVersion); return err }(), "version"},
		{"ICRC of non-IPv4", func() error { _, err := ICRC(make([]byte, 60)); return err }(), "not an IPv4"},
		{"ICRC short", CheckICRC(make([]byte, 3)), "too short"},
	} {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.msg) {
			t.Errorf("%s: error %v, want one saying %q", tt.name, tt.err, tt.msg)
		}
		if tt.msg == "too short" && !errors.Is(tt.err, ErrShort) {
			t.Errorf("%s: %v is not ErrShort", tt.name, tt.err)
		}
	}
}

func TestPacket(t *testing.T) {
	env := IPv4{
		Src:     netip.MustParseAddr("192.168.77.12"),
		Dst:     netip.MustParseAddr("192.168.77.13"),
		ID:      0x1234,
		SrcPort: 0xc000,
	}
	ib := BTH{Opcode: OpResume, PKey: 0xffff, DestQPN: 0x11, PSN: 7}.Append(nil)
	ib = MigEth{Type: MigResume, SrcQPN: 0x12, RespPSN: 7, CompPSN: 7, Token: 1}.Append(ib)
	p, err := Packet(env, ib)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 20+8+12+32+4 {
		t.Fatalf("packet is %d bytes", len(p))
	}
	if err := CheckICRC(p); err != nil {
		t.Error(err)
	}
	if ipChecksum(p[:IPv4HeaderLen]) != 0 {
		t.Error("IP header checksum does not verify")
	}
	if got := hex.EncodeToString(p[:28]); got != "4500004c123440004011"+hex.EncodeToString(p[10:12])+"c0a84d0cc0a84d0dc00012b700380000" {
		t.Errorf("IP/UDP headers %s", got)
	}
	if _, err := Packet(IPv4{Src: netip.MustParseAddr("::1"), Dst: env.Dst}, ib); err == nil {
		t.Error("IPv6 source accepted")
	}
	if _, err := Packet(env, ib[:4]); !errors.Is(err, ErrShort) {
		t.Errorf("short transport headers: %v", err)
	}
}
