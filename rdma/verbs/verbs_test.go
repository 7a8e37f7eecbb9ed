// SPDX-License-Identifier: Apache-2.0

package verbs

import (
	"encoding/binary"
	"syscall"
	"testing"
)

// fakeArena records the ioctl it is asked to run and answers it like the
// kernel would: it fills the core and driver outputs.
type fakeArena struct {
	mem   []byte
	attrs map[uint16][2]uint64 // id -> len, data
	seq   byte                 // ioctls run; the first output byte of each
}

func (f *fakeArena) Addr() uint64 { return 0x10000 }
func (f *fakeArena) Size() int    { return len(f.mem) }
func (f *fakeArena) WriteAt(b []byte, off int) error {
	copy(f.mem[off:], b)
	return nil
}
func (f *fakeArena) ReadAt(b []byte, off int) error {
	copy(b, f.mem[off:])
	return nil
}
func (f *fakeArena) Ioctl(fd int, req uint64, off int) (uint64, syscall.Errno) {
	le := binary.LittleEndian
	hdr := f.mem[off:]
	if req != verbsIoctl || le.Uint32(hdr[16:]) != driverRXE || le.Uint16(hdr[2:]) != objDevice {
		return 0, syscall.EINVAL
	}
	f.seq++
	f.attrs = map[uint16][2]uint64{}
	for i := 0; i < int(le.Uint16(hdr[6:])); i++ {
		o := hdrSize + attrSize*i
		f.attrs[le.Uint16(hdr[o:])] = [2]uint64{uint64(le.Uint16(hdr[o+2:])), le.Uint64(hdr[o+8:])}
	}
	// Fill outputs with a recognisable pattern: byte i = i+1.
	for _, id := range []uint16{attrCoreOut, attrUHWOut} {
		if a, ok := f.attrs[id]; ok {
			for i := uint64(0); i < a[0]; i++ {
				f.mem[a[1]-f.Addr()+i] = byte(i + 1)
			}
		}
	}
	return 0, 0
}

func TestInvokeLayout(t *testing.T) {
	a := &fakeArena{mem: make([]byte, 4096)}
	d := &Device{FD: 3, arena: a}
	q, err := d.CreateQP(QPInit{UserHandle: 0xabc, PD: 1, SendCQ: 2, RecvCQ: 2, Type: 2})
	if err != nil {
		t.Fatal(err)
	}
	if a.attrs[attrWriteCmd] != [2]uint64{8, cmdCreateQP} {
		t.Errorf("write command attr %v", a.attrs[attrWriteCmd])
	}
	in := a.attrs[attrCoreIn]
	if in[0] != 56 || in[1] < a.Addr() {
		t.Fatalf("core in %v", in)
	}
	cmd := a.mem[in[1]-a.Addr():]
	le := binary.LittleEndian
	if le.Uint64(cmd[8:]) != 0xabc || le.Uint32(cmd[16:]) != 1 || le.Uint32(cmd[20:]) != 2 || cmd[53] != 2 {
		t.Errorf("create_qp command % x", cmd[:56])
	}
	if a.attrs[attrCoreOut][0] != 32 || a.attrs[attrUHWOut][0] != 32 {
		t.Errorf("outputs %v %v", a.attrs[attrCoreOut], a.attrs[attrUHWOut])
	}
	// qp_handle = bytes 1..4, qpn = 5..8; rq_mi.offset = bytes 1..8 of uhw.
	if q.Handle != 0x04030201 || q.QPN != 0x08070605 || q.RQ.Offset != 0x0807060504030201 {
		t.Errorf("decoded %+v", q)
	}
	// A short command travels inline.
	if _, err := d.AllocPD(); err != nil {
		t.Fatal(err)
	}
	if a.attrs[attrCoreIn] != [2]uint64{8, 0} {
		t.Errorf("alloc_pd input %v, want inline zero", a.attrs[attrCoreIn])
	}
	// An arena too small is an error, not an overrun.
	small := &Device{FD: 3, arena: &fakeArena{mem: make([]byte, 64)}}
	if _, err := small.CreateQP(QPInit{}); err == nil {
		t.Error("create QP in a 64-byte arena succeeded")
	}
}

// A hint goes to the next create as its driver input, after the core
// input, and to that create only; commands that take none leave it.
func TestHintLayout(t *testing.T) {
	a := &fakeArena{mem: make([]byte, 4096)}
	d := &Device{FD: 3, arena: a}
	hint := []byte{1, 0, 0, 0, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	d.Hint(hint)
	if _, err := d.AllocPD(); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.attrs[attrUHWIn]; ok {
		t.Fatal("alloc_pd took the hint")
	}
	q, err := d.CreateQP(QPInit{UserHandle: 0xabc, PD: 1, SendCQ: 2, RecvCQ: 2, Type: 2})
	if err != nil {
		t.Fatal(err)
	}
	drv, in := a.attrs[attrUHWIn], a.attrs[attrCoreIn]
	if drv[0] != uint64(len(hint)) || drv[1] != in[1]+in[0] {
		t.Fatalf("driver input %v after core input %v", drv, in)
	}
	if got := a.mem[drv[1]-a.Addr():][:len(hint)]; string(got) != string(hint) {
		t.Errorf("driver input % x, want % x", got, hint)
	}
	// The outputs follow it and decode as without it.
	if out := a.attrs[attrCoreOut]; out[1] != drv[1]+drv[0] || q.Handle != 0x04030201 || q.QPN != 0x08070605 {
		t.Errorf("core output %v, decoded %+v", out, q)
	}
	if _, err := d.RegMR(1, 0x1000, 4096, 0x1000, 1); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.attrs[attrUHWIn]; ok {
		t.Error("a second create took the same hint")
	}

	// In a batch, the create queued next takes it.
	b := &batchArena{fakeArena: fakeArena{mem: make([]byte, 4096)}}
	bd := &Device{FD: 3, arena: b}
	bt, err := bd.Batch()
	if err != nil {
		t.Fatal(err)
	}
	bd.Hint(hint)
	if err := bt.CreateSRQ("SRQ", 1, 1, 4, 1, 0, func(SRQ) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := bt.Flush(); err != nil {
		t.Fatal(err)
	}
	if drv := b.attrs[attrUHWIn]; drv[0] != uint64(len(hint)) {
		t.Errorf("batched create's driver input %v", drv)
	}
}
