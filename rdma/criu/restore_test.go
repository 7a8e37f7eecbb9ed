// SPDX-License-Identifier: Apache-2.0

package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/image"
	"github.com/migros/migros/rdma/verbs"
)

// fakePlugin answers executor requests as the CRIU plugin does, running
// them in this process, over a SOCK_SEQPACKET pair. Its one thread is the
// "task" (tid 0 or the tid it returns); other threads do not exist.
func fakePlugin(t *testing.T) (*Executor, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "migros"), os.NewFile(uintptr(fds[1]), "plugin")
	t.Cleanup(func() { ours.Close() })
	tids := make(chan int)
	go func() {
		runtime.LockOSThread()
		defer theirs.Close()
		tids <- unix.Gettid()
		var req [64]byte
		for {
			if n, err := theirs.Read(req[:]); err != nil || n != len(req) {
				return
			}
			le := binary.LittleEndian
			var a [6]uintptr
			for i := range a {
				a[i] = uintptr(le.Uint64(req[8+8*i:]))
			}
			ret := -int64(unix.ESRCH)
			if le.Uint64(req[:]) == execBatch {
				ret = fakeBatch(uint64(a[0]), int(a[1]))
			} else if tid := int(le.Uint64(req[56:])); tid == 0 || tid == unix.Gettid() {
				r, _, errno := unix.Syscall6(uintptr(le.Uint64(req[:])), a[0], a[1], a[2], a[3], a[4], a[5])
				ret = int64(r)
				if errno != 0 {
					ret = -int64(errno)
				}
			}
			if _, err := theirs.Write(le.AppendUint64(nil, uint64(ret))); err != nil {
				return
			}
		}
	}()
	return NewExecutor(ours), <-tids
}

// fakeBatch runs a table of calls as the plugin's loop does: in order,
// each result in its entry, stopping after the first that fails.
func fakeBatch(table uint64, n int) int64 {
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return -int64(unix.EIO)
	}
	defer mem.Close()
	le := binary.LittleEndian
	for i := 0; i < n; i++ {
		e := make([]byte, 64)
		at := int64(table) + int64(64*i)
		if _, err := mem.ReadAt(e, at); err != nil {
			return -int64(unix.EFAULT)
		}
		var a [6]uintptr
		for j := range a {
			a[j] = uintptr(le.Uint64(e[8+8*j:]))
		}
		r, _, errno := unix.Syscall6(uintptr(le.Uint64(e)), a[0], a[1], a[2], a[3], a[4], a[5])
		ret := int64(r)
		if errno != 0 {
			ret = -int64(errno)
		}
		if _, err := mem.WriteAt(le.AppendUint64(nil, uint64(ret)), at+56); err != nil {
			return -int64(unix.EFAULT)
		}
		if errno != 0 {
			return int64(i + 1)
		}
	}
	return int64(n)
}

// selfTask is this process as the executor's task, with a 4 KiB arena
// in it that the caller closes.
func selfTask(t *testing.T, e *Executor) (*task, *remoteArena) {
	t.Helper()
	tk, err := openTask(os.Getpid(), e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tk.close)
	a, err := newRemoteArena(tk, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return tk, a
}

func TestExecutorBatch(t *testing.T) {
	e, _ := fakePlugin(t)
	tk, a := selfTask(t, e)
	defer a.close()

	// Calls run in order with their results; a failure stops the table
	// and names the call.
	got, err := tk.batch(a, []Call{{Op: "getpid", NR: unix.SYS_GETPID}, {Op: "gettid", NR: unix.SYS_GETTID}})
	if err != nil || len(got) != 2 || int(got[0]) != os.Getpid() {
		t.Fatalf("batch: %v, %v", got, err)
	}
	got, err = tk.batch(a, []Call{{Op: "getpid", NR: unix.SYS_GETPID}, {Op: "close of a bad fd", NR: unix.SYS_CLOSE, Args: [6]uint64{1 << 20}},
		{Op: "never", NR: unix.SYS_GETPID}})
	if !errors.Is(err, unix.EBADF) || !strings.Contains(err.Error(), "close of a bad fd") || len(got) != 1 {
		t.Fatalf("batch with a failing call: %v, %v", got, err)
	}
	// More calls than the arena holds go in several runs.
	many := make([]Call, 4096/64*3+5)
	for i := range many {
		many[i] = Call{Op: "getpid", NR: unix.SYS_GETPID}
	}
	if got, err := tk.batch(a, many); err != nil || len(got) != len(many) {
		t.Fatalf("batch of %d: %d results, %v", len(many), len(got), err)
	}

	// ioctls through the arena: the results of all but a failure.
	n, errno, err := a.IoctlBatch(1<<20, []verbs.IoctlAt{{Req: 0, Off: 0}}, 1024)
	if err != nil || n != 1 || errno != unix.EBADF {
		t.Fatalf("ioctl batch on a bad fd: %d, %v, %v", n, errno, err)
	}

	// Many places read and written with one call each way.
	bufs := [][]byte{[]byte("one"), []byte("two"), []byte("six")}
	var ws []memWrite
	var addrs []uint64
	for i, b := range bufs {
		at := a.addr + uint64(512*i)
		ws = append(ws, memWrite{addr: at, data: b})
		addrs = append(addrs, at)
	}
	if err := tk.writeAll(ws); err != nil {
		t.Fatal(err)
	}
	back, err := tk.readAll(addrs, 3)
	if err != nil || string(back[0])+string(back[1])+string(back[2]) != "onetwosix" {
		t.Fatalf("read back %q, %v", back, err)
	}
	if _, err := tk.readAll([]uint64{8}, 3); err == nil {
		t.Fatal("read of an unmapped address succeeded")
	}
}

func TestExecutor(t *testing.T) {
	e, tid := fakePlugin(t)
	pid, err := e.Syscall(unix.SYS_GETPID)
	if err != nil || int(pid) != os.Getpid() {
		t.Errorf("getpid: %d, %v; want %d", pid, err, os.Getpid())
	}
	if got, err := e.SyscallIn(tid, unix.SYS_GETTID); err != nil || int(got) != tid {
		t.Errorf("gettid in thread %d: %d, %v", tid, got, err)
	}
	if _, err := e.SyscallIn(-1, unix.SYS_GETTID); !errors.Is(err, unix.ESRCH) {
		t.Errorf("a call in no thread: %v, want ESRCH", err)
	}
	if _, err := e.Syscall(unix.SYS_CLOSE, 1<<20); !errors.Is(err, unix.EBADF) {
		t.Errorf("close of a bad fd: %v, want EBADF", err)
	}
	if _, err := e.Syscall(unix.SYS_GETPID, 1, 2, 3, 4, 5, 6, 7); !errors.Is(err, ErrExecutor) {
		t.Errorf("7 arguments: %v", err)
	}

	// An arena "in the task" (here: this process) moves bytes and runs
	// ioctls there.
	_, a := selfTask(t, e)
	if err := a.WriteAt([]byte("migros"), 100); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	if err := a.ReadAt(b, 100); err != nil || string(b) != "migros" {
		t.Errorf("arena read back %q, %v", b, err)
	}
	if err := a.WriteAt(b, 4093); err == nil {
		t.Error("a write past the arena's end succeeded")
	}
	if _, errno := a.Ioctl(1<<20, 0, 0); errno != syscall.EBADF {
		t.Errorf("ioctl on a bad fd: %v", errno)
	}
	if err := a.close(); err != nil {
		t.Error(err)
	}

	// A dead plugin is an executor error, not an errno of the call.
	e.conn.(*os.File).Close()
	if _, err := e.Syscall(unix.SYS_GETPID); !errors.Is(err, ErrExecutor) {
		t.Errorf("call after the plugin went away: %v", err)
	}
}

func TestReplay(t *testing.T) {
	rc := rdma.QPDump{QPN: 0x11, QPType: 2, QPState: 3, PKeyIndex: 0, PortNum: 1, AccessFlags: 7, PathMTU: 3,
		DestQPN: 0x12, RQPSN: 100, SQPSN: 200, MaxDestRDAtomic: 4, MaxRDAtomic: 2, MinRNRTimer: 12,
		Timeout: 14, RetryCnt: 7, RNRRetry: 6, AV: rdma.AV{SGIDIndex: 1, HopLimit: 64, DGID: [16]byte{15: 9}}}
	ud := rdma.QPDump{QPN: 0x20, QPType: 4, QPState: 3, QKey: 0x11111111, SQPSN: 5, PortNum: 1}
	rtr := rc
	rtr.QPState = 2
	for _, tc := range []struct {
		name  string
		q     rdma.QPDump
		steps []verbs.QPAttr
		err   bool
	}{
		{name: "RC in RTS", q: rc, steps: []verbs.QPAttr{
			{Mask: verbs.QPState | verbs.QPPKeyIndex | verbs.QPPort | verbs.QPAccessFlags, State: 1, PortNum: 1, AccessFlags: 7},
			{Mask: verbs.QPState | verbs.QPAV | verbs.QPPathMTU | verbs.QPDestQPN | verbs.QPRQPSN | verbs.QPMaxDestRDAtom | verbs.QPMinRNRTimer,
				State: 2, PathMTU: 3, DestQPN: 0x12, RQPSN: 100, MaxDestRDAtomic: 4, MinRNRTimer: 12,
				DGID: rc.AV.DGID, SGIDIndex: 1, HopLimit: 64, PortNum: 1},
			{Mask: verbs.QPState | verbs.QPSQPSN | verbs.QPTimeout | verbs.QPRetryCnt | verbs.QPRNRRetry | verbs.QPMaxQPRDAtomic,
				State: 3, SQPSN: 200, Timeout: 14, RetryCnt: 7, RNRRetry: 6, MaxRDAtomic: 2},
		}},
		{name: "RC in RTR stops there", q: rtr, steps: nil},
		{name: "UD in RTS", q: ud, steps: []verbs.QPAttr{
			{Mask: verbs.QPState | verbs.QPPKeyIndex | verbs.QPPort | verbs.QPQKey, State: 1, PortNum: 1, QKey: 0x11111111},
			{Mask: verbs.QPState, State: 2},
			{Mask: verbs.QPState | verbs.QPSQPSN, State: 3, SQPSN: 5},
		}},
		{name: "reset", q: rdma.QPDump{QPType: 2}, steps: nil},
		{name: "error state", q: rdma.QPDump{QPType: 2, QPState: 6}, err: true},
		{name: "XRC", q: rdma.QPDump{QPType: 9, QPState: 3}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := replay(tc.q)
			if tc.err {
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("err %v, want ErrUnsupported", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.steps == nil && tc.q.QPState == 2 {
				if len(got) != 2 || got[1].State != 2 {
					t.Fatalf("RTR: %+v", got)
				}
				return
			}
			if len(got) != len(tc.steps) {
				t.Fatalf("%d steps, want %d: %+v", len(got), len(tc.steps), got)
			}
			for i := range got {
				if got[i] != tc.steps[i] {
					t.Errorf("step %d:\n got %+v\nwant %+v", i, got[i], tc.steps[i])
				}
			}
		})
	}
}

func TestRestorable(t *testing.T) {
	rc := rdma.QPObject{QPDump: rdma.QPDump{QPN: 0x11, QPType: 2, QPState: 3}}
	ud := rdma.QPObject{QPDump: rdma.QPDump{QPN: 0x12, QPType: 4, QPState: 3}}
	uc := rdma.QPObject{QPDump: rdma.QPDump{QPN: 0x14, QPType: 3, QPState: 3}}
	raw := rdma.QPObject{QPDump: rdma.QPDump{QPN: 0x15, QPType: 8, QPState: 3}}
	mcast := rdma.QPObject{QPDump: rdma.QPDump{QPN: 0x16, QPType: 4, QPState: 3, McastGroups: 2}}
	broken := rdma.QPObject{QPDump: rdma.QPDump{QPN: 0x13, QPType: 2, QPState: 6}}
	mr := rdma.MRObject{Handle: 7, MRDump: rdma.MRDump{LKey: 0x2f3}}
	type1 := rdma.MWObject{MWDump: rdma.MWDump{RKey: 0x500, Type: 1, MRLKey: 0x2f3}}
	type2 := rdma.MWObject{MWDump: rdma.MWDump{RKey: 0x700, Type: 2, MRLKey: 0x2f3, QPN: 0x11}}
	orphanQP := rdma.MWObject{MWDump: rdma.MWDump{RKey: 0x800, Type: 2, MRLKey: 0x2f3, QPN: 0x99}}
	free := rdma.MWObject{MWDump: rdma.MWDump{RKey: 0x600}}
	for _, tc := range []struct {
		name string
		objs rdma.ContextDump
		want string // "" for restorable
		kind error  // what it is if not
	}{
		{"RC QP and a free MW", rdma.ContextDump{QPs: []rdma.QPObject{rc}, MWs: []rdma.MWObject{free}}, "", nil},
		{"RC, UC and UD QPs", rdma.ContextDump{QPs: []rdma.QPObject{rc, uc, ud}}, "", nil},
		{"raw packet QP", rdma.ContextDump{QPs: []rdma.QPObject{rc, raw}}, "QP 0x15 of type 8", ErrUnsupported},
		{"UD QP in multicast groups", rdma.ContextDump{QPs: []rdma.QPObject{ud, mcast}}, "QP 0x16 is in 2 multicast group(s)", ErrUnsupported},
		{"QP in error", rdma.ContextDump{QPs: []rdma.QPObject{broken}}, "QP 0x13 in IB state 6", ErrUnsupported},
		{"bound MWs", rdma.ContextDump{QPs: []rdma.QPObject{rc}, MRs: []rdma.MRObject{mr}, MWs: []rdma.MWObject{type1, type2}}, "", nil},
		{"MW bound to a missing MR", rdma.ContextDump{MWs: []rdma.MWObject{type1}}, "MW 0x500 is bound to MR 0x2f3, which it does not hold", image.ErrCorrupt},
		{"MW bound to a missing QP", rdma.ContextDump{QPs: []rdma.QPObject{rc}, MRs: []rdma.MRObject{mr}, MWs: []rdma.MWObject{orphanQP}},
			"MW 0x800 is bound to QP 0x99, which it does not hold", image.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Restorable(&image.Context{Objects: &tc.objs})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %v with %q", err, tc.kind, tc.want)
			}
		})
	}
}

func TestMovedFrom(t *testing.T) {
	src := []string{"::ffff:192.168.77.11", "fe80::5054:ff:fe77:11"}
	for _, tc := range []struct {
		name       string
		old, local []string
		want       []string
	}{
		{"same host", src, src, nil},
		{"another host", src, []string{"::ffff:192.168.77.12", "fe80::5054:ff:fe77:12"}, src},
		{"an address kept", src, []string{"::ffff:192.168.77.11", "fe80::1"}, src[1:]},
		{"dumped without GIDs", nil, src, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := movedFrom(tc.old, tc.local); !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	many := make([]string, 12)
	for i := range many {
		many[i] = fmt.Sprintf("fe80::%d", i+1)
	}
	if got := movedFrom(many, nil); len(got) != maxOldGIDs {
		t.Fatalf("%d old GIDs passed on, the driver takes %d", len(got), maxOldGIDs)
	}
}

func TestInHandleOrder(t *testing.T) {
	qps := func(hs ...uint32) []rdma.QPObject {
		var q []rdma.QPObject
		for _, h := range hs {
			q = append(q, rdma.QPObject{Handle: h})
		}
		return q
	}
	for _, tc := range []struct {
		name string
		o    rdma.ContextDump
		want bool
	}{
		{"QPs listed backwards", rdma.ContextDump{PDs: []uint32{0}, CQs: []rdma.CQObject{{Handle: 1}}, QPs: qps(5, 3, 2),
			MRs: []rdma.MRObject{{Handle: 7}}}, true},
		{"a QP below its CQ (handle reused)", rdma.ContextDump{PDs: []uint32{0}, CQs: []rdma.CQObject{{Handle: 4}}, QPs: qps(2, 5)}, false},
		{"the same handle twice", rdma.ContextDump{PDs: []uint32{0}, QPs: qps(1, 1)}, false},
		{"nothing", rdma.ContextDump{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := inHandleOrder(&tc.o); got != tc.want {
				t.Fatalf("inHandleOrder = %v, want %v", got, tc.want)
			}
			if hs := tc.o.QPs; len(hs) > 1 && hs[0].Handle > hs[1].Handle {
				t.Fatalf("QPs not sorted: %v", hs)
			}
		})
	}
}
