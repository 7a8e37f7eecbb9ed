// SPDX-License-Identifier: Apache-2.0

package verbs

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma"
)

// These tests need an rxe device with MigrOS' module and root; the lab
// runs them in a guest (integration TestVerbsOnDevice) with MIGROS_DEVICE
// naming the uverbs file.
func device(t *testing.T) (*Device, *rdma.Context) {
	t.Helper()
	path := os.Getenv("MIGROS_DEVICE")
	if path == "" {
		t.Skip("MIGROS_DEVICE not set: no RDMA device to test on")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	a, err := NewLocalArena(1 << 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	d, async, err := NewDevice(a, int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(async) })
	return d, rdma.FromFile(f, int(f.Fd()))
}

// Objects are created with the user_handle given, and a hint gives the
// next QP and MR exactly the QPN and keys a restore asks for.
func TestDeviceHintedIDs(t *testing.T) {
	d, c := device(t)
	pd, err := d.AllocPD()
	if err != nil {
		t.Fatal(err)
	}
	cq, err := d.CreateCQ(0x1111, 16, -1)
	if err != nil {
		t.Fatal(err)
	}
	if cq.CQE < 16 || cq.Queue.Size == 0 {
		t.Errorf("CQ %+v", cq)
	}
	init := QPInit{UserHandle: 0x2222, PD: pd, SendCQ: cq.Handle, RecvCQ: cq.Handle,
		MaxSendWR: 8, MaxRecvWR: 8, MaxSendSGE: 1, MaxRecvSGE: 1, Type: 2}
	q0, err := d.CreateQP(init)
	if err != nil {
		t.Fatal(err)
	}
	if q0.SQ.Size == 0 || q0.RQ.Size == 0 {
		t.Errorf("QP %+v has no queues to map", q0)
	}

	want := rdma.ID{Type: rdma.IDQP, Index: q0.QPN + 100}
	if errs, err := c.CheckIDs([]rdma.ID{want}); err != nil || errs[0] != nil {
		t.Fatalf("QPN %#x not free: %v %v", want.Index, errs, err)
	}
	if err := c.SetHint(want); err != nil {
		t.Fatal(err)
	}
	q1, err := d.CreateQP(init)
	if err != nil {
		t.Fatal(err)
	}
	if q1.QPN != want.Index {
		t.Fatalf("hinted QP got QPN %#x, want %#x", q1.QPN, want.Index)
	}
	if errs, _ := c.CheckIDs([]rdma.ID{want}); !errors.Is(errs[0], rdma.ErrIDTaken) {
		t.Errorf("QPN %#x in use is reported %v", want.Index, errs[0])
	}

	// A taken QPN fails the create; the hint serves one create only.
	if err := c.SetHint(rdma.ID{Type: rdma.IDQP, Index: q0.QPN}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateQP(init); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("QP at a taken QPN: %v, want EBUSY", err)
	}
	if q, err := d.CreateQP(init); err != nil || q.QPN == q0.QPN || q.QPN == q1.QPN {
		t.Fatalf("QP after a failed hint: %+v, %v", q, err)
	}

	buf, err := unix.Mmap(-1, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	const access = 1 | 2 // local and remote write
	m0, err := d.RegMR(pd, addrOf(buf), 4096, addrOf(buf), access)
	if err != nil {
		t.Fatal(err)
	}
	key := rdma.ID{Type: rdma.IDMR, Index: m0.LKey>>8 + 50, Key: 0x5a, HasKey: true}
	if err := c.SetHint(key); err != nil {
		t.Fatal(err)
	}
	m1, err := d.RegMR(pd, addrOf(buf), 8192, 0x10000, access)
	if err != nil {
		t.Fatal(err)
	}
	if wantKey := key.Index<<8 | 0x5a; m1.LKey != wantKey || m1.RKey != wantKey {
		t.Fatalf("hinted MR keys %#x/%#x, want %#x", m1.LKey, m1.RKey, wantKey)
	}

	// The dump sees what was created.
	qd, _, err := c.DumpQP(q1.Handle)
	if err != nil || qd.UserHandle != 0x2222 || qd.QPN != want.Index || qd.PDHandle != pd {
		t.Errorf("dump of hinted QP %+v, %v", qd, err)
	}
	cd, err := c.DumpCQ(cq.Handle)
	if err != nil || cd.UserHandle != 0x1111 || cd.Queue.Offset != cq.Queue.Offset {
		t.Errorf("dump of CQ %+v, %v", cd, err)
	}
	md, err := c.DumpMR(m1.Handle)
	if err != nil || md.LKey != m1.LKey || md.IOVA != 0x10000 || md.Length != 8192 || md.Start != addrOf(buf) {
		t.Errorf("dump of MR %+v, %v", md, err)
	}
}
