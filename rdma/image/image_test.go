// SPDX-License-Identifier: Apache-2.0

package image

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/migros/migros/rdma"
)

func sample() *Context {
	return &Context{
		PID: 42, FD: 3, Device: "/dev/infiniband/uverbs0", EventFDs: []int{4, 5}, MigVersion: "6-abc",
		GIDs: []string{"::ffff:192.168.77.11", "fe80::5054:ff:fe77:11"},
		Objects: &rdma.ContextDump{
			PDs: []uint32{0},
			CQs: []rdma.CQObject{{Handle: 1, CQDump: rdma.CQDump{CQE: 128}}},
			QPs: []rdma.QPObject{
				{Handle: 2, QPDump: rdma.QPDump{QPN: 0x11, DestQPN: 0x12}},
				// A UD QP that held one request when stopped.
				{Handle: 4, QPDump: rdma.QPDump{QPN: 0x13, QPType: rdma.QPTypeUD},
					Progress: rdma.RespProgress{HeldCount: 1, HeldBytes: 16}, Held: bytes.Repeat([]byte{3}, 16)},
			},
			MRs: []rdma.MRObject{{Handle: 3, MRDump: rdma.MRDump{LKey: 0x2fa, Length: 4096}}},
		},
		Rings: []Ring{
			{Kind: "cq", Handle: 1, VA: 0x7f0000001000, Data: bytes.Repeat([]byte{1}, 100)},
			{Kind: "sq", Handle: 2, VA: 0x7f0000003000, Data: bytes.Repeat([]byte{2}, 50)},
			{Kind: "rq", Handle: 2, VA: 0x7f0000005000, Data: nil},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	b, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := sample()
	if c.PID != want.PID || c.FD != want.FD || c.Device != want.Device || len(c.EventFDs) != 2 ||
		c.Objects.QPs[0].QPN != 0x11 || c.Objects.MRs[0].LKey != 0x2fa || len(c.Rings) != 3 {
		t.Fatalf("decoded %+v", c)
	}
	if ud := c.Objects.QPs[1]; ud.Progress.HeldCount != 1 || !bytes.Equal(ud.Held, want.Objects.QPs[1].Held) ||
		!slices.Equal(c.GIDs, want.GIDs) {
		t.Errorf("held requests or GIDs lost: %+v, %q", ud, c.GIDs)
	}
	for i, r := range c.Rings {
		if r.Kind != want.Rings[i].Kind || r.VA != want.Rings[i].VA || !bytes.Equal(r.Data, want.Rings[i].Data) {
			t.Errorf("ring %d: %+v", i, r)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0xff
		return b
	}
	for _, tt := range []struct {
		name string
		b    []byte
		msg  string
	}{
		{"empty", nil, "too short"},
		{"not an image", []byte("hello, this is not an RDMA image at all"), "magic"},
		{"truncated", good[:len(good)-10], "checksum"},
		{"damaged blob", flip(len(good) - 20), "checksum"},
		{"damaged metadata", flip(20), "checksum"},
	} {
		_, err := Decode(tt.b)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: %v, want ErrCorrupt saying %q", tt.name, err, tt.msg)
		}
	}
}

// FuzzDecode: no input makes Decode panic, and what it accepts encodes
// back to an image it accepts again.
func FuzzDecode(f *testing.F) {
	good, err := Encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		again, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(again); err != nil {
			t.Fatalf("re-encoded image rejected: %v", err)
		}
	})
}
