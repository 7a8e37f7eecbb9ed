// SPDX-License-Identifier: Apache-2.0

package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/image"
	"github.com/migros/migros/rdma/verbs"
)

// ErrUnsupported is something in an image that restore cannot rebuild.
var ErrUnsupported = errors.New("not supported by MigrOS restore")

// placeholders are what the plugin left in a restored task: memfds at the
// fd numbers of its uverbs files (by CRIU file id) and of its event files,
// and the memfd its ring VMAs were mapped from.
type placeholders struct {
	uverbs map[int]int // CRIU file id -> fd
	events map[int]int // fd -> CRIU file id
	vma    []int
}

func findPlaceholders(pid int) (placeholders, error) {
	p := placeholders{uverbs: map[int]int{}, events: map[int]int{}}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return p, fmt.Errorf("criu: %w", err)
	}
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		name := strings.TrimSuffix(strings.TrimPrefix(target, "/memfd:"), " (deleted)")
		var id int
		switch {
		case name == target:
		case name == "migros-vma":
			p.vma = append(p.vma, fd)
		case scan(name, "migros-uverbs-%d", &id):
			p.uverbs[id] = fd
		case scan(name, "migros-event-%d", &id):
			p.events[fd] = id
		}
	}
	return p, nil
}

func scan(s, format string, id *int) bool {
	n, err := fmt.Sscanf(s, format, id)
	return n == 1 && err == nil
}

// readImage reads CRIU file id's RDMA image from the images directory.
func readImage(dir *os.File, id int) (*image.Context, error) {
	fd, err := unix.Openat(int(dir.Fd()), image.FileName(id), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("criu: %s: %w", image.FileName(id), err)
	}
	f := os.NewFile(uintptr(fd), image.FileName(id))
	defer f.Close()
	b, err := readAll(f)
	if err != nil {
		return nil, fmt.Errorf("criu: %s: %w", image.FileName(id), err)
	}
	img, err := image.Decode(b)
	if err != nil {
		return nil, fmt.Errorf("criu: %s: %w", image.FileName(id), err)
	}
	return img, nil
}

// readAll reads f whole, into a buffer of its size: growing one as
// io.ReadAll does costs a restore tens of milliseconds under emulation.
func readAll(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, st.Size())
	n, err := io.ReadFull(f, b)
	if err == io.ErrUnexpectedEOF {
		return b[:n], nil
	}
	return b, err
}

// Restore rebuilds the RDMA state of process pid, which CRIU has restored
// and holds stopped, from the images in dir; e runs system calls in it.
// The process opens its devices and creates every object itself, with its
// original IDs and handles, maps its rings where they were and gets every
// descriptor back at its number; then its QPs resume and tell their peers
// where they now are. It returns how long that resume took.
func Restore(pid int, dir *os.File, e *Executor) (resume time.Duration, err error) {
	ph, err := findPlaceholders(pid)
	if err != nil {
		return 0, err
	}
	if len(ph.uverbs) == 0 {
		return 0, fmt.Errorf("criu: process %d has no uverbs placeholder to restore", pid)
	}
	t, err := openTask(pid, e)
	if err != nil {
		return 0, err
	}
	defer t.close()
	a, err := newRemoteArena(t, 1<<20)
	if err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, a.close()) }()

	ids := make([]int, 0, len(ph.uverbs))
	for id := range ph.uverbs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	var done []*rdma.Context
	defer func() {
		for _, c := range done {
			c.Close()
		}
	}()
	for _, id := range ids {
		img, err := readImage(dir, id)
		if err != nil {
			return 0, err
		}
		if img.FD != ph.uverbs[id] {
			return 0, fmt.Errorf("criu: image %s is for fd %d, its placeholder is fd %d", image.FileName(id), img.FD, ph.uverbs[id])
		}
		c, err := restoreContext(t, a, img)
		if c != nil {
			done = append(done, c)
		}
		if err != nil {
			return 0, fmt.Errorf("criu: restoring %s of process %d: %w", img.Device, pid, err)
		}
	}
	for _, fd := range ph.vma {
		if _, err := t.call("close of the ring placeholder", unix.SYS_CLOSE, uint64(fd)); err != nil {
			return 0, err
		}
	}
	if err := t.shareCreds(a, done); err != nil {
		return 0, err
	}
	start := time.Now()
	for _, c := range done {
		if _, err := c.Resume(); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// ResumedLog begins the line the CRIU helper writes into CRIU's restore
// log once a process's QPs resumed, followed by how long it took, in
// microseconds (checkpoint.LogTimes reads it).
const ResumedLog = "migros-criu: QPs resumed, us:"

// shareCreds makes every other thread of the task use the cred struct of
// each reopened uverbs file (which the main thread opened), so that all
// of them can post (see rdma.ShareCredCall). A thread whose credentials
// differ from the file's is left alone: it could not post before the
// checkpoint either.
func (t *task) shareCreds(a *remoteArena, ctxs []*rdma.Context) error {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", t.pid))
	if err != nil {
		return fmt.Errorf("criu: threads of process %d: %w", t.pid, err)
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || tid == t.pid {
			continue
		}
		for _, c := range ctxs {
			req, arg := rdma.ShareCredCall(int32(c.FD))
			if err := a.WriteAt(arg, 0); err != nil {
				return err
			}
			_, err := t.exec.SyscallIn(tid, unix.SYS_IOCTL, uint64(c.FD), req, a.Addr())
			if err != nil && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("criu: thread %d of process %d cannot use %s (fd %d): %w", tid, t.pid, c.Path, c.FD, err)
			}
		}
	}
	return nil
}

// libibverbs (rdma-core 44, x86_64) structures the process keeps, at the
// addresses its uverbs objects carry as user_handle. Restore reads them
// to learn what the kernel does not say: which completion channel a CQ
// uses and which descriptor is the context's async event file.
const (
	ibvCQContext   = 0   // struct ibv_cq: context
	ibvCQChannel   = 8   // channel
	ibvCQHandle    = 24  // handle
	ibvChannelFD   = 8   // struct ibv_comp_channel: fd
	ibvQPContext   = 0   // struct ibv_qp: context
	ibvQPNum       = 52  // qp_num
	ibvCtxCmdFD    = 264 // struct ibv_context: cmd_fd, after device and 32 ops
	ibvCtxAsyncFD  = 268
	ibvCtxReadSize = 272
)

// sortObjects puts the objects of each type in handle order, the order
// restore creates them in.
func sortObjects(o *rdma.ContextDump) {
	slices.Sort(o.PDs)
	byHandle := func(h func(i int) uint32) func(i, j int) bool {
		return func(i, j int) bool { return h(i) < h(j) }
	}
	sort.Slice(o.CQs, byHandle(func(i int) uint32 { return o.CQs[i].Handle }))
	sort.Slice(o.SRQs, byHandle(func(i int) uint32 { return o.SRQs[i].Handle }))
	sort.Slice(o.QPs, byHandle(func(i int) uint32 { return o.QPs[i].Handle }))
	sort.Slice(o.MRs, byHandle(func(i int) uint32 { return o.MRs[i].Handle }))
	sort.Slice(o.MWs, byHandle(func(i int) uint32 { return o.MWs[i].Handle }))
	sort.Slice(o.AHs, byHandle(func(i int) uint32 { return o.AHs[i].Handle }))
}

// inHandleOrder sorts the objects of each type by handle and reports
// whether creating them by type then makes their handles strictly
// increasing.
func inHandleOrder(o *rdma.ContextDump) bool {
	sortObjects(o)
	hs := o.AllHandles()
	for i := 1; i < len(hs); i++ {
		if hs[i] <= hs[i-1] {
			return false
		}
	}
	return true
}

// appFDs finds, in the process' libibverbs structures, the async event fd
// of the context of img and the completion channel fd of each CQ (by
// handle; absent if none).
func appFDs(t *task, img *image.Context) (async int, channels map[uint32]int, err error) {
	le := binary.LittleEndian
	o := img.Objects
	// One read for all the ibv_cq structures, one for the ibv_qp ones.
	at := func(n int, addr func(i int) uint64) []uint64 {
		a := make([]uint64, n)
		for i := range a {
			a[i] = addr(i)
		}
		return a
	}
	cqs, err := t.readAll(at(len(o.CQs), func(i int) uint64 { return o.CQs[i].UserHandle }), ibvCQHandle+4)
	if err != nil {
		return -1, nil, err
	}
	qps, err := t.readAll(at(len(o.QPs), func(i int) uint64 { return o.QPs[i].UserHandle }), ibvQPNum+4)
	if err != nil {
		return -1, nil, err
	}
	channels = map[uint32]int{}
	var ctxAddr uint64
	var chanCQs []uint32
	var chanAddrs []uint64
	for i, cq := range o.CQs {
		b := cqs[i]
		if h := le.Uint32(b[ibvCQHandle:]); h != cq.Handle {
			return -1, nil, fmt.Errorf("%w: the ibv_cq at %#x has handle %d, not %d (not libibverbs' layout?)",
				ErrUnsupported, cq.UserHandle, h, cq.Handle)
		}
		ctxAddr = le.Uint64(b[ibvCQContext:])
		if ch := le.Uint64(b[ibvCQChannel:]); ch != 0 {
			chanCQs = append(chanCQs, cq.Handle)
			chanAddrs = append(chanAddrs, ch+ibvChannelFD)
		}
	}
	fds, err := t.readAll(chanAddrs, 4)
	if err != nil {
		return -1, nil, err
	}
	for i, h := range chanCQs {
		channels[h] = int(int32(le.Uint32(fds[i])))
	}
	for i, qp := range o.QPs {
		b := qps[i]
		if n := le.Uint32(b[ibvQPNum:]); n != qp.QPN {
			return -1, nil, fmt.Errorf("%w: the ibv_qp at %#x has QPN %#x, not %#x (not libibverbs' layout?)",
				ErrUnsupported, qp.UserHandle, n, qp.QPN)
		}
		if ctxAddr == 0 {
			ctxAddr = le.Uint64(b[ibvQPContext:])
		}
	}
	if ctxAddr == 0 {
		return -1, nil, fmt.Errorf("%w: a context with neither CQ nor QP", ErrUnsupported)
	}
	b, err := t.read(ctxAddr, ibvCtxReadSize)
	if err != nil {
		return -1, nil, err
	}
	if cmd := int(int32(le.Uint32(b[ibvCtxCmdFD:]))); cmd != img.FD {
		return -1, nil, fmt.Errorf("%w: the ibv_context at %#x has cmd_fd %d, not %d (not libibverbs' layout?)",
			ErrUnsupported, ctxAddr, cmd, img.FD)
	}
	return int(int32(le.Uint32(b[ibvCtxAsyncFD:]))), channels, nil
}

// Restorable says whether restore can rebuild everything in img, so that
// what it cannot is refused before anything is created.
func Restorable(img *image.Context) error {
	var errs []error
	for _, q := range img.Objects.QPs {
		if _, err := replay(q.QPDump); err != nil {
			errs = append(errs, err)
		}
		if q.McastGroups > 0 {
			errs = append(errs, fmt.Errorf("%w: QP %#x is in %d multicast group(s), which restore cannot rejoin",
				ErrUnsupported, q.QPN, q.McastGroups))
		}
	}
	for _, w := range img.Objects.MWs {
		if _, _, err := mwBinding(img.Objects, w); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mwBinding finds, in the image, the handles of the MR and (type 2) QP a
// bound MW is bound to; none (0, nil) for an MW that is not bound.
func mwBinding(o *rdma.ContextDump, w rdma.MWObject) (mr uint32, qp *uint32, err error) {
	if w.MRLKey == 0 {
		return 0, nil, nil
	}
	found := false
	for _, m := range o.MRs {
		if m.LKey == w.MRLKey {
			mr, found = m.Handle, true
		}
	}
	if !found {
		return 0, nil, fmt.Errorf("%w: MW %#x is bound to MR %#x, which it does not hold", image.ErrCorrupt, w.RKey, w.MRLKey)
	}
	if w.Type != 2 {
		return mr, nil, nil
	}
	for _, q := range o.QPs {
		if q.QPN == w.QPN {
			h := q.Handle
			return mr, &h, nil
		}
	}
	return 0, nil, fmt.Errorf("%w: MW %#x is bound to QP %#x, which it does not hold", image.ErrCorrupt, w.RKey, w.QPN)
}

// maxOldGIDs is how many old GIDs the driver takes per UD QP
// (RXE_MIG_OLD_GIDS_MAX).
const maxOldGIDs = 8

// movedFrom is what of the GIDs old (the dumped device's) this host's
// device (local) does not have: the addresses the process' UD QPs were
// reached at and no longer are. None if restored where it was dumped.
func movedFrom(old, local []string) []string {
	var moved []string
	for _, g := range old {
		if !slices.Contains(local, g) && len(moved) < maxOldGIDs {
			moved = append(moved, g)
		}
	}
	return moved
}

// replay is the sequence of modify_qp calls that takes a new QP to the
// dumped QP's IB state with its attributes.
func replay(q rdma.QPDump) ([]verbs.QPAttr, error) {
	const (
		rc, uc, ud = rdma.QPTypeRC, rdma.QPTypeUC, rdma.QPTypeUD
		reset      = 0
		rts        = 3
	)
	if q.QPState > rts {
		return nil, fmt.Errorf("%w: QP %#x in IB state %d", ErrUnsupported, q.QPN, q.QPState)
	}
	if q.QPType != rc && q.QPType != uc && q.QPType != ud {
		return nil, fmt.Errorf("%w: QP %#x of type %d", ErrUnsupported, q.QPN, q.QPType)
	}
	init := verbs.QPAttr{Mask: verbs.QPState | verbs.QPPKeyIndex | verbs.QPPort, State: 1,
		PKeyIndex: q.PKeyIndex, PortNum: q.PortNum}
	if q.QPType == ud {
		init.Mask |= verbs.QPQKey
		init.QKey = q.QKey
	} else {
		init.Mask |= verbs.QPAccessFlags
		init.AccessFlags = q.AccessFlags
	}
	rtr := verbs.QPAttr{Mask: verbs.QPState, State: 2}
	if q.QPType != ud {
		rtr.Mask |= verbs.QPAV | verbs.QPPathMTU | verbs.QPDestQPN | verbs.QPRQPSN
		rtr.PathMTU, rtr.DestQPN, rtr.RQPSN = uint8(q.PathMTU), q.DestQPN, q.RQPSN
		rtr.DGID, rtr.FlowLabel, rtr.SGIDIndex = q.AV.DGID, q.AV.FlowLabel, q.AV.SGIDIndex
		rtr.HopLimit, rtr.TrafficClass, rtr.PortNum = q.AV.HopLimit, q.AV.TrafficClass, q.PortNum
	}
	if q.QPType == rc {
		rtr.Mask |= verbs.QPMaxDestRDAtom | verbs.QPMinRNRTimer
		rtr.MaxDestRDAtomic, rtr.MinRNRTimer = q.MaxDestRDAtomic, q.MinRNRTimer
	}
	rts2 := verbs.QPAttr{Mask: verbs.QPState | verbs.QPSQPSN, State: 3, SQPSN: q.SQPSN}
	if q.QPType == rc {
		rts2.Mask |= verbs.QPTimeout | verbs.QPRetryCnt | verbs.QPRNRRetry | verbs.QPMaxQPRDAtomic
		rts2.Timeout, rts2.RetryCnt, rts2.RNRRetry, rts2.MaxRDAtomic = q.Timeout, q.RetryCnt, q.RNRRetry, q.MaxRDAtomic
	}
	steps := []verbs.QPAttr{init, rtr, rts2}
	if q.QPState == reset {
		return nil, nil
	}
	return steps[:q.QPState], nil
}

// cloexec reports whether the task's fd is close-on-exec (as CRIU restored
// it on the placeholder).
func (t *task) cloexec(fd int) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", t.pid, fd))
	if err != nil {
		return false, fmt.Errorf("criu: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			f, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && f&unix.O_CLOEXEC != 0, err
		}
	}
	return false, fmt.Errorf("criu: no flags in fdinfo %d of process %d", fd, t.pid)
}

// moveFD puts the task's descriptor from at to (replacing the placeholder
// there, keeping its close-on-exec flag) and closes from.
func (t *task) moveFD(from, to int) error {
	cloexec, err := t.cloexec(to)
	if err != nil {
		return err
	}
	var flags uint64
	if cloexec {
		flags = unix.O_CLOEXEC
	}
	if _, err := t.call(fmt.Sprintf("dup3 of fd %d to %d", from, to), unix.SYS_DUP3, uint64(from), uint64(to), flags); err != nil {
		return err
	}
	_, err = t.call(fmt.Sprintf("close of fd %d", from), unix.SYS_CLOSE, uint64(from))
	return err
}

// queue queues call in b, unless making it failed (err) or it has nothing
// to run.
func queue(b *verbs.Batch, call rdma.IoctlCall, err error) error {
	if err != nil || call.Size == 0 {
		return err
	}
	return b.Ioctl(call.Name, call.Req, call.Size, call.Layout, nil)
}

// restoreContext rebuilds one uverbs context of the task from img. The
// Context it returns (once the device is open) is this process' handle on
// the task's file, for the driver's migration methods.
func restoreContext(t *task, a *remoteArena, img *image.Context) (*rdma.Context, error) {
	o := img.Objects
	if err := Restorable(img); err != nil {
		return nil, err
	}
	asyncFD, channelOf, err := appFDs(t, img)
	if err != nil {
		return nil, err
	}

	// The task opens the device itself: its file must carry the task's
	// credentials, which the uverbs write() path (librxe's doorbell)
	// checks.
	path := append([]byte(img.Device), 0)
	if err := a.WriteAt(path, 0); err != nil {
		return nil, err
	}
	cwd := int64(unix.AT_FDCWD)
	nfd, err := t.call("open of "+img.Device, unix.SYS_OPENAT, uint64(cwd), a.Addr(),
		unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fd := int(nfd)
	f, err := t.file(fd, img.Device)
	if err != nil {
		return nil, err
	}
	c := rdma.FromFile(f, img.FD)
	dev, newAsync, err := verbs.NewDevice(a, fd)
	if err != nil {
		return c, err
	}

	// Every ID must be free before anything is created.
	errs, err := c.CheckIDs(o.IDs())
	if err != nil {
		return c, err
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	// The creates below carry their objects' IDs. They run in the task,
	// which need not hold the privilege that takes: this process lets
	// the context's creates do it while the restore runs.
	if err := c.AllowHints(true); err != nil {
		return c, err
	}
	defer c.AllowHints(false)

	// Every call in the task is a ptrace round trip. What need not run
	// there runs here, on this process' copy of the file: the handle
	// fillers, which live only while the restore runs, and modify_qp,
	// which touches neither the task's memory nor its credentials.
	local, err := verbs.NewLocalArena(1 << 20)
	if err != nil {
		return c, err
	}
	defer local.Close()
	here := verbs.AttachDevice(local, int(f.Fd()))

	// uverbs gives each new object the lowest free handle of the context.
	// Objects are created by type (dependencies first), each type in
	// handle order. If that is handle order overall, as it is unless
	// handles were reused, each object is created when every handle
	// below its own is taken, after a PD filler for each handle in
	// between that no object owns. Otherwise every handle up to the
	// highest is filled first and each object's filler freed just before
	// it is created. The fillers left are freed at the end.
	ordered := inHandleOrder(o)
	handles := o.AllHandles()
	var fillers []uint32 // to free once every object is created
	if !ordered {
		owned := map[uint32]bool{}
		maxH := -1
		for _, h := range handles {
			owned[h] = true
			maxH = max(maxH, int(h))
		}
		fill, err := here.Batch()
		if err != nil {
			return c, err
		}
		for h := 0; h <= maxH; h++ {
			err := fill.AllocPD("filler", func(got uint32) error {
				if int(got) != h {
					return fmt.Errorf("filler for handle %d got handle %d", h, got)
				}
				return nil
			})
			if err != nil {
				return c, err
			}
			if !owned[uint32(h)] {
				fillers = append(fillers, uint32(h))
			}
		}
		if err := fill.Flush(); err != nil {
			return c, err
		}
	}
	// Every create runs in the task (the objects are charged to its
	// cgroup and owned by it), all in one batch with the fillers' PDs;
	// each create carries its ID hint. What depends on the results is
	// checked, as each result comes back.
	b, err := dev.Batch()
	if err != nil {
		return c, err
	}
	var next uint32 // ordered: the lowest handle not taken yet
	// at queues the creation of the object of handle h, with its ID hint
	// if it has one; create queues the create itself.
	at := func(h uint32, what string, hint *rdma.ID, create func(what string, check func(got uint32) error) error) error {
		if ordered {
			for ; next < h; next++ {
				g := next
				err := b.AllocPD("filler", func(got uint32) error {
					if got != g {
						return fmt.Errorf("filler for handle %d got handle %d", g, got)
					}
					return nil
				})
				if err != nil {
					return err
				}
				fillers = append(fillers, g)
			}
			next = h + 1
		} else if err := b.DeallocPD(h); err != nil {
			return err
		}
		if hint != nil {
			dev.Hint(hint.Hint())
		}
		return create(what, func(got uint32) error {
			if got != h {
				return fmt.Errorf("%s got handle %d, want %d", what, got, h)
			}
			return nil
		})
	}

	for _, h := range o.PDs {
		err := at(h, fmt.Sprintf("PD %d", h), nil, func(what string, check func(uint32) error) error {
			return b.AllocPD(what, check)
		})
		if err != nil {
			return c, err
		}
	}
	newChannel := map[int]int{} // the process' channel fd -> the new one
	queues := map[string]verbs.MMInfo{}
	ring := func(kind string, h uint32) string { return fmt.Sprintf("%s %d", kind, h) }
	for _, q := range o.CQs {
		ch := int32(-1)
		if old, ok := channelOf[q.Handle]; ok {
			if _, ok := newChannel[old]; !ok {
				n, err := dev.CreateCompChannel()
				if err != nil {
					return c, err
				}
				newChannel[old] = n
			}
			ch = int32(newChannel[old])
		}
		err := at(q.Handle, fmt.Sprintf("CQ %d", q.Handle), nil, func(what string, check func(uint32) error) error {
			return b.CreateCQ(what, q.UserHandle, q.CQE, ch, func(cq verbs.CQ) error {
				queues[ring("cq", q.Handle)] = cq.Queue
				return check(cq.Handle)
			})
		})
		if err != nil {
			return c, err
		}
	}
	for _, s := range o.SRQs {
		id := rdma.ID{Type: rdma.IDSRQ, Index: s.SRQNum}
		err := at(s.Handle, fmt.Sprintf("SRQ %#x", s.SRQNum), &id, func(what string, check func(uint32) error) error {
			return b.CreateSRQ(what, s.UserHandle, s.PDHandle, s.MaxWR, s.MaxSGE, s.Limit, func(srq verbs.SRQ) error {
				if srq.SRQNum != s.SRQNum {
					return fmt.Errorf("SRQ %#x was created as %#x", s.SRQNum, srq.SRQNum)
				}
				queues[ring("srq", s.Handle)] = srq.Queue
				return check(srq.Handle)
			})
		})
		if err != nil {
			return c, err
		}
	}
	for _, q := range o.QPs {
		init := verbs.QPInit{UserHandle: q.UserHandle, PD: q.PDHandle, SendCQ: q.SendCQHandle, RecvCQ: q.RecvCQHandle,
			MaxSendWR: q.MaxSendWR, MaxRecvWR: q.MaxRecvWR, MaxSendSGE: q.MaxSendSGE, MaxRecvSGE: q.MaxRecvSGE,
			MaxInlineData: q.MaxInlineData, SQSigAll: q.SQSigAll != 0, Type: uint8(q.QPType)}
		if q.SRQHandle != rdma.NoHandle {
			init.SRQ, init.UseSRQ = q.SRQHandle, true
		}
		steps, err := replay(q.QPDump)
		if err != nil {
			return c, err
		}
		id := rdma.ID{Type: rdma.IDQP, Index: q.QPN}
		// The QP is taken to its IB state right after its create, in the
		// same batch: its handle is known (and checked) in advance.
		err = at(q.Handle, fmt.Sprintf("QP %#x", q.QPN), &id, func(what string, check func(uint32) error) error {
			err := b.CreateQP(what, init, func(qp verbs.QP) error {
				if qp.QPN != q.QPN {
					return fmt.Errorf("QP %#x was created as %#x", q.QPN, qp.QPN)
				}
				queues[ring("sq", q.Handle)], queues[ring("rq", q.Handle)] = qp.SQ, qp.RQ
				return check(qp.Handle)
			})
			for _, s := range steps {
				if err != nil {
					return err
				}
				err = b.ModifyQP(what, q.Handle, s)
			}
			return err
		})
		if err != nil {
			return c, err
		}
	}
	for _, m := range o.MRs {
		id := rdma.KeyID(rdma.IDMR, m.LKey)
		err := at(m.Handle, fmt.Sprintf("MR %#x", m.LKey), &id, func(what string, check func(uint32) error) error {
			return b.RegMR(what, m.PDHandle, m.Start, m.Length, m.IOVA, m.Access, func(mr verbs.MR) error {
				if mr.LKey != m.LKey || mr.RKey != m.RKey {
					return fmt.Errorf("MR %#x/%#x was registered as %#x/%#x", m.LKey, m.RKey, mr.LKey, mr.RKey)
				}
				return check(mr.Handle)
			})
		})
		if err != nil {
			return c, err
		}
	}
	for _, w := range o.MWs {
		id := rdma.KeyID(rdma.IDMW, w.RKey)
		err := at(w.Handle, fmt.Sprintf("MW %#x", w.RKey), &id, func(what string, check func(uint32) error) error {
			return b.AllocMW(what, w.PDHandle, uint8(w.Type), func(mw verbs.MW) error {
				if mw.RKey != w.RKey {
					return fmt.Errorf("MW %#x was allocated as %#x", w.RKey, mw.RKey)
				}
				if err := check(mw.Handle); err != nil || w.MRLKey == 0 {
					return err
				}
				mr, qp, err := mwBinding(o, w)
				if err != nil {
					return err
				}
				return c.RestoreMW(w.Handle, mr, qp, w.MWDump)
			})
		})
		if err != nil {
			return c, err
		}
	}
	for _, ah := range o.AHs {
		id := rdma.ID{Type: rdma.IDAH, Index: ah.AHNum}
		attr := verbs.AHAttr{DGID: ah.AV.DGID, FlowLabel: ah.AV.FlowLabel, SGIDIndex: ah.AV.SGIDIndex,
			HopLimit: ah.AV.HopLimit, TrafficClass: ah.AV.TrafficClass, PortNum: ah.AV.PortNum}
		err := at(ah.Handle, fmt.Sprintf("AH %d", ah.AHNum), &id, func(what string, check func(uint32) error) error {
			return b.CreateAH(what, ah.UserHandle, ah.PDHandle, attr, func(got verbs.AH) error {
				if got.AHNum != ah.AHNum {
					return fmt.Errorf("AH %d was created as %d", ah.AHNum, got.AHNum)
				}
				return check(got.Handle)
			})
		})
		if err != nil {
			return c, err
		}
	}
	if err := b.Flush(); err != nil {
		return c, err
	}

	for _, h := range fillers {
		if err := b.DeallocPD(h); err != nil {
			return c, err
		}
	}
	if err := b.Flush(); err != nil {
		return c, err
	}
	// Rings: the new queue buffers go where the process has them mapped
	// (all mapped in one batch), with the dumped contents.
	var maps []Call
	for _, r := range img.Rings {
		q, ok := queues[ring(r.Kind, r.Handle)]
		if !ok {
			return c, fmt.Errorf("image has a %s ring of handle %d, which has no such queue", r.Kind, r.Handle)
		}
		// The driver hands out whole pages.
		if page := uint64(os.Getpagesize()); uint64(q.Size) != (uint64(len(r.Data))+page-1)/page*page {
			return c, fmt.Errorf("%s ring of handle %d: %d bytes recreated, %d dumped", r.Kind, r.Handle, q.Size, len(r.Data))
		}
		maps = append(maps, Call{Op: fmt.Sprintf("mmap of the %s of handle %d", r.Kind, r.Handle), NR: unix.SYS_MMAP,
			Args: [6]uint64{r.VA, uint64(q.Size), unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | unix.MAP_FIXED, uint64(fd), q.Offset}})
	}
	vas, err := t.batch(a, maps)
	if err != nil {
		return c, err
	}
	contents := make([]memWrite, len(img.Rings))
	for i, r := range img.Rings {
		if vas[i] != r.VA {
			return c, fmt.Errorf("%s ring of handle %d mapped at %#x, not %#x", r.Kind, r.Handle, vas[i], r.VA)
		}
		contents[i] = memWrite{addr: r.VA, data: r.Data}
	}
	if err := t.writeAll(contents); err != nil {
		return c, err
	}

	// The driver's own state: it stays Stopped until resumed. Then the
	// core's event counts, and the completion events the process had not
	// read yet, queued again on its (new) channels.
	for _, q := range o.CQs {
		if err := c.RestoreCQ(q.Handle, q.CQDump); err != nil {
			return c, err
		}
		if err := c.RestoreEvents(rdma.ObjCQ, q.Handle, q.Events); err != nil {
			return c, err
		}
	}
	for _, q := range o.SRQs {
		if err := c.RestoreSRQ(q.Handle, q.SRQDump); err != nil {
			return c, err
		}
		if err := c.RestoreEvents(rdma.ObjSRQ, q.Handle, q.Events); err != nil {
			return c, err
		}
	}
	hostGIDs, err := c.GIDs()
	if err != nil {
		return c, err
	}
	moved := movedFrom(img.GIDs, hostGIDs)
	// One call stops them all: this context has no other QPs.
	if n, err := c.Stop(); err != nil {
		return c, err
	} else if n != len(o.QPs) {
		return c, fmt.Errorf("stopped %d QPs, restored %d", n, len(o.QPs))
	}
	// Every QP's driver state with its responder's progress, and its
	// event counts, in one local batch.
	st, err := here.Batch()
	if err != nil {
		return c, err
	}
	for _, q := range o.QPs {
		var oldGIDs []string
		if q.QPType == rdma.QPTypeUD {
			oldGIDs = moved
		}
		qp, err := rdma.RestoreQPCall(q, oldGIDs)
		if err := queue(st, qp, err); err != nil {
			return c, err
		}
		events, err := rdma.RestoreEventsCall(rdma.ObjQP, q.Handle, q.Events)
		if err := queue(st, events, err); err != nil {
			return c, err
		}
	}
	if err := st.Flush(); err != nil {
		return c, err
	}

	// Every descriptor at its number.
	if err := t.moveFD(fd, img.FD); err != nil {
		return c, err
	}
	if err := t.moveFD(newAsync, asyncFD); err != nil {
		return c, err
	}
	for old, n := range newChannel {
		if err := t.moveFD(n, old); err != nil {
			return c, err
		}
	}
	return c, nil
}
