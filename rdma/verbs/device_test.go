// SPDX-License-Identifier: Apache-2.0

package verbs

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
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
	d.Hint(want.Hint())
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
	d.Hint(rdma.ID{Type: rdma.IDQP, Index: q0.QPN}.Hint())
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
	d.Hint(key.Hint())
	m1, err := d.RegMR(pd, addrOf(buf), 8192, 0x10000, access)
	if err != nil {
		t.Fatal(err)
	}
	if wantKey := key.Index<<8 | 0x5a; m1.LKey != wantKey || m1.RKey != wantKey {
		t.Fatalf("hinted MR keys %#x/%#x, want %#x", m1.LKey, m1.RKey, wantKey)
	}
	// A hint names an ID of the created object's type, within its range.
	d.Hint(rdma.ID{Type: rdma.IDQP, Index: q0.QPN + 200}.Hint())
	if _, err := d.RegMR(pd, addrOf(buf), 4096, addrOf(buf), access); !errors.Is(err, unix.EINVAL) {
		t.Errorf("MR with a QP's hint: %v, want EINVAL", err)
	}
	d.Hint(rdma.ID{Type: rdma.IDQP, Index: 1}.Hint())
	if _, err := d.CreateQP(init); !errors.Is(err, unix.ERANGE) {
		t.Errorf("QP hinted below the QPN range: %v, want ERANGE", err)
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

// gid reads GID index 1 (the IPv4 one in the lab) of the device behind
// MIGROS_DEVICE.
func gid(t *testing.T) [16]byte {
	t.Helper()
	uverbs := filepath.Base(os.Getenv("MIGROS_DEVICE"))
	ibdev, err := os.ReadFile("/sys/class/infiniband_verbs/" + uverbs + "/ibdev")
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.ReadFile("/sys/class/infiniband/" + strings.TrimSpace(string(ibdev)) + "/ports/1/gids/1")
	if err != nil {
		t.Fatal(err)
	}
	var g [16]byte
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(s)), ":", ""))
	if err != nil || len(h) != 16 {
		t.Fatalf("GID %q: %v", s, err)
	}
	copy(g[:], h)
	return g
}

// connect takes a QP through INIT, RTR and RTS towards dest on this
// device, with the attributes a restore replays.
func connect(t *testing.T, d *Device, h, dest uint32, g [16]byte) {
	t.Helper()
	steps := []QPAttr{
		{Mask: QPState | QPPKeyIndex | QPPort | QPAccessFlags, State: 1, PortNum: 1, AccessFlags: 1 | 2 | 4},
		{Mask: QPState | QPAV | QPPathMTU | QPDestQPN | QPRQPSN | QPMaxDestRDAtom | QPMinRNRTimer,
			State: 2, PathMTU: 3, DestQPN: dest, RQPSN: 100, MaxDestRDAtomic: 4, MinRNRTimer: 12,
			DGID: g, SGIDIndex: 1, HopLimit: 1, PortNum: 1},
		{Mask: QPState | QPTimeout | QPRetryCnt | QPRNRRetry | QPSQPSN | QPMaxQPRDAtomic,
			State: 3, SQPSN: 200, Timeout: 14, RetryCnt: 7, RNRRetry: 7, MaxRDAtomic: 4},
	}
	for _, s := range steps {
		if err := d.ModifyQP(h, s); err != nil {
			t.Fatal(err)
		}
	}
}

// A QP taken to RTS with ModifyQP, stopped, then loaded with a dumped
// state (changed here so that the load shows) reports that state; a load
// into a running QP or with another queue geometry is refused; a CQ's arm
// state is restored.
func TestDeviceRestoreState(t *testing.T) {
	d, c := device(t)
	g := gid(t)
	pd, err := d.AllocPD()
	if err != nil {
		t.Fatal(err)
	}
	cq, err := d.CreateCQ(1, 16, -1)
	if err != nil {
		t.Fatal(err)
	}
	init := QPInit{PD: pd, SendCQ: cq.Handle, RecvCQ: cq.Handle, MaxSendWR: 8, MaxRecvWR: 8, MaxSendSGE: 1, MaxRecvSGE: 1, Type: 2}
	qa, err := d.CreateQP(init)
	if err != nil {
		t.Fatal(err)
	}
	qb, err := d.CreateQP(init)
	if err != nil {
		t.Fatal(err)
	}
	connect(t, d, qa.Handle, qb.QPN, g)
	connect(t, d, qb.Handle, qa.QPN, g)

	st, res, err := c.DumpQP(qa.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if st.QPState != 3 || st.SQPSN != 200 || st.RQPSN != 100 || st.DestQPN != qb.QPN || st.Timeout != 14 ||
		st.MaxDestRDAtomic != 4 || len(res) != 4 || st.AV.DGID != g || st.AV.SGIDIndex != 1 {
		t.Fatalf("QP after ModifyQP: %+v (%d resources)", st, len(res))
	}
	if err := c.RestoreQP(rdma.QPObject{Handle: qa.Handle, QPDump: st, RespRes: res}, nil); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("restore into a QP that is not Stopped: %v, want EINVAL", err)
	}
	if err := c.StopQP(qa.Handle); err != nil {
		t.Fatal(err)
	}
	st, res, err = c.DumpQP(qa.Handle)
	if err != nil {
		t.Fatal(err)
	}
	want := st
	want.ReqPSN, want.CompPSN, want.ReqOpcode, want.CompOpcode = 0x210, 0x205, 4, 4
	want.RespPSN, want.RespMSN, want.RespAckPSN, want.RespOpcode = 0x150, 7, 0x14f, 4
	want.CompRetryCnt, want.CompRNRRetry, want.SSN, want.MigToken = 3, 5, 9, 0x7777
	want.RespResHead, want.RespResTail = 2, 1
	res[1] = rdma.RespRes{Type: 1 << 4, FirstPSN: 0x140, LastPSN: 0x142, CurPSN: 0x141, VAOrg: 0x1000, VA: 0x1400, RKey: 0x2fa, Length: 4096, Resid: 1024}
	// Inside a SEND (opcode 1, RC SEND_MIDDLE), the responder needs its
	// receive WQE back: this QP's RQ is empty, so it has none, and the
	// restore is refused, leaving the responder outside any message.
	inSend := want
	inSend.RespOpcode = 1
	if err := c.RestoreQP(rdma.QPObject{Handle: qa.Handle, QPDump: inSend, RespRes: res}, nil); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("restore inside a SEND with no receive WQE: %v, want EINVAL", err)
	}
	if got, _, err := c.DumpQP(qa.Handle); err != nil || got.RespOpcode != 0xffffffff {
		t.Fatalf("responder opcode after a refused restore inside a SEND: %#x (%v), want none (-1)", got.RespOpcode, err)
	}
	progress := rdma.RespProgress{VA: 0x1400, Offset: 0x400, RKey: 0x2fa, Resid: 1024, Length: 4096}
	if err := c.RestoreQP(rdma.QPObject{Handle: qa.Handle, QPDump: want, RespRes: res, Progress: progress}, nil); err != nil {
		t.Fatal(err)
	}
	got, gotRes, err := c.DumpQP(qa.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("after restore:\n got %+v\nwant %+v", got, want)
	}
	if len(gotRes) != 4 || gotRes[1] != res[1] {
		t.Errorf("responder resource after restore: %+v, want %+v", gotRes, res[1])
	}
	if p, _, _, err := c.DumpProgress(qa.Handle, rdma.QPTypeRC); err != nil || p != progress {
		t.Errorf("responder progress after restore: %+v (%v), want %+v", p, err, progress)
	}
	bad := want
	bad.SQ.IndexMask++
	if err := c.RestoreQP(rdma.QPObject{Handle: qa.Handle, QPDump: bad}, nil); !errors.Is(err, unix.EINVAL) {
		t.Errorf("restore with another SQ geometry: %v, want EINVAL", err)
	}

	cd, err := c.DumpCQ(cq.Handle)
	if err != nil {
		t.Fatal(err)
	}
	cd.Notify = 2 // IB_CQ_NEXT_COMP
	if err := c.RestoreCQ(cq.Handle, cd); err != nil {
		t.Fatal(err)
	}
	if back, err := c.DumpCQ(cq.Handle); err != nil || back.Notify != 2 {
		t.Errorf("CQ after restore: %+v, %v", back, err)
	}
	cd.Notify = 5
	if err := c.RestoreCQ(cq.Handle, cd); !errors.Is(err, unix.EINVAL) {
		t.Errorf("restore of an impossible arm state: %v", err)
	}
}

// An SRQ, an AH and an MW get the numbers and key a hint asks for, and
// their dumps show what they were created with.
func TestDeviceHintedSRQAHMW(t *testing.T) {
	d, c := device(t)
	pd, err := d.AllocPD()
	if err != nil {
		t.Fatal(err)
	}
	s0, err := d.CreateSRQ(0x3333, pd, 16, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	if s0.Queue.Size == 0 {
		t.Errorf("SRQ %+v has no queue to map", s0)
	}
	srqID := rdma.ID{Type: rdma.IDSRQ, Index: s0.SRQNum + 7}
	d.Hint(srqID.Hint())
	s1, err := d.CreateSRQ(0x3334, pd, 16, 1, 4)
	if err != nil || s1.SRQNum != srqID.Index {
		t.Fatalf("hinted SRQ %+v, %v; want number %#x", s1, err, srqID.Index)
	}
	sd, err := c.DumpSRQ(s1.Handle)
	if err != nil || sd.UserHandle != 0x3334 || sd.SRQNum != s1.SRQNum || sd.PDHandle != pd || sd.Limit != 4 || sd.Queue.Offset != s1.Queue.Offset {
		t.Errorf("dump of SRQ %+v, %v", sd, err)
	}

	g := gid(t)
	a0, err := d.CreateAH(0x4444, pd, AHAttr{DGID: g, SGIDIndex: 1, HopLimit: 1, PortNum: 1})
	if err != nil {
		t.Fatal(err)
	}
	ahID := rdma.ID{Type: rdma.IDAH, Index: a0.AHNum + 3}
	d.Hint(ahID.Hint())
	a1, err := d.CreateAH(0x4445, pd, AHAttr{DGID: g, SGIDIndex: 1, HopLimit: 1, PortNum: 1})
	if err != nil || a1.AHNum != ahID.Index {
		t.Fatalf("hinted AH %+v, %v; want number %d", a1, err, ahID.Index)
	}
	ad, err := c.DumpAH(a1.Handle)
	if err != nil || ad.UserHandle != 0x4445 || ad.AHNum != a1.AHNum || ad.AV.DGID != g || ad.AV.SGIDIndex != 1 {
		t.Errorf("dump of AH %+v, %v", ad, err)
	}

	w0, err := d.AllocMW(pd, 2)
	if err != nil {
		t.Fatal(err)
	}
	mwID := rdma.KeyID(rdma.IDMW, w0.RKey+0x500)
	d.Hint(mwID.Hint())
	w1, err := d.AllocMW(pd, 2)
	if err != nil || w1.RKey != w0.RKey+0x500 {
		t.Fatalf("hinted MW %+v, %v; want rkey %#x", w1, err, w0.RKey+0x500)
	}
	wd, err := c.DumpMW(w1.Handle)
	if err != nil || wd.RKey != w1.RKey || wd.Type != 2 || wd.PDHandle != pd {
		t.Errorf("dump of MW %+v, %v", wd, err)
	}
}
