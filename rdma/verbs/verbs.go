// SPDX-License-Identifier: Apache-2.0

// Package verbs issues the uverbs commands that recreate RDMA objects
// (protection domains, CQs, QPs, MRs) with the exact parameters a restore
// needs, user_handle included, which libibverbs' own calls do not let one
// choose. Commands travel through the ioctl interface (INVOKE_WRITE), as
// rdma-core 44 sends them.
//
// Every command is laid out in an Arena: memory in the address space of
// the process that issues the ioctl. The local arena is this process'; a
// restore uses one in the restored process, so that the objects are
// created by, and belong to, that process.
package verbs

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arena is scratch memory in the address space where ioctls run, and the
// means to run them there.
type Arena interface {
	// Addr is the address of the arena in that address space.
	Addr() uint64
	Size() int
	WriteAt(b []byte, off int) error
	ReadAt(b []byte, off int) error
	// Ioctl runs ioctl(fd, req, Addr()+off) there.
	Ioctl(fd int, req uint64, off int) (uint64, syscall.Errno)
}

// LocalArena is an Arena in this process.
type LocalArena struct{ mem []byte }

// NewLocalArena maps size bytes of scratch memory; the GC never moves it.
func NewLocalArena(size int) (*LocalArena, error) {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("verbs: arena: %w", err)
	}
	return &LocalArena{mem: mem}, nil
}

func (a *LocalArena) Addr() uint64 { return addrOf(a.mem) }
func (a *LocalArena) Size() int    { return len(a.mem) }
func (a *LocalArena) Close() error { return unix.Munmap(a.mem) }

func (a *LocalArena) WriteAt(b []byte, off int) error {
	if off < 0 || off+len(b) > len(a.mem) {
		return fmt.Errorf("verbs: write of %d bytes at %d outside the arena", len(b), off)
	}
	copy(a.mem[off:], b)
	return nil
}

func (a *LocalArena) ReadAt(b []byte, off int) error {
	if off < 0 || off+len(b) > len(a.mem) {
		return fmt.Errorf("verbs: read of %d bytes at %d outside the arena", len(b), off)
	}
	copy(b, a.mem[off:])
	return nil
}

func (a *LocalArena) Ioctl(fd int, req uint64, off int) (uint64, syscall.Errno) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(a.Addr())+uintptr(off))
	return uint64(r), errno
}

// uverbs ioctl ABI.
const (
	verbsIoctl = 0xc0181b01 // RDMA_VERBS_IOCTL
	hdrSize    = 24
	attrSize   = 16
	driverRXE  = 14

	objDevice         = 0
	methodInvokeWrite = 0
	attrCoreIn        = 0
	attrCoreOut       = 1
	attrWriteCmd      = 2
	attrUHWIn         = 0x1000
	attrUHWOut        = 0x1001
)

// Classic verbs commands (enum ib_uverbs_write_cmds).
const (
	cmdGetContext        = 0
	cmdAllocPD           = 3
	cmdDeallocPD         = 4
	cmdCreateAH          = 5
	cmdRegMR             = 9
	cmdAllocMW           = 14
	cmdCreateCompChannel = 17
	cmdCreateCQ          = 18
	cmdCreateQP          = 24
	cmdCreateSRQ         = 32
)

// Error is a failed command.
type Error struct {
	Op    string
	Errno syscall.Errno
}

func (e *Error) Error() string { return fmt.Sprintf("verbs: %s: %v", e.Op, e.Errno) }
func (e *Error) Unwrap() error { return e.Errno }

// Device is an open uverbs file with a context, on which commands run.
type Device struct {
	FD    int // in the address space of the arena
	arena Arena
	hint  []byte // driver input of the next create (see Hint)
}

// Hint gives the next QP, MR, SRQ, AH or MW the device creates (directly
// or queued in a batch) in as its driver input: a restore's ID hint
// (rdma.ID.Hint), which makes the driver give it that ID or fail.
func (d *Device) Hint(in []byte) { d.hint = in }

// takeHint gives c the pending hint if c is a create that takes one.
func (d *Device) takeHint(c *command) {
	if c.hintable && d.hint != nil {
		c.drv, d.hint = d.hint, nil
	}
}

// NewDevice uses fd, a uverbs file open in the arena's process that has no
// context yet, and gets it one. It returns the context's async event fd.
func NewDevice(a Arena, fd int) (*Device, int, error) {
	d := &Device{FD: fd, arena: a}
	out := make([]byte, 8) // async_fd, num_comp_vectors
	if err := d.invoke("get context", cmdGetContext, make([]byte, 8), out, nil); err != nil {
		return nil, -1, err
	}
	return d, int(binary.LittleEndian.Uint32(out)), nil
}

// AttachDevice uses fd, a uverbs file open in the arena's process whose
// context another descriptor of the same file got (for example a copy
// taken with pidfd_getfd): objects it creates belong to that context.
func AttachDevice(a Arena, fd int) *Device { return &Device{FD: fd, arena: a} }

// command is a classic verbs command: core input in and, when not empty,
// driver input drv, core output out and driver output uhw, which the run
// fills.
type command struct {
	op       string // what errors call it: a format for its nargs args
	args     [2]uint64
	nargs    int
	what     string // what it is for, if given
	cmd      uint32
	in, drv  []byte
	out, uhw []byte
	hintable bool // a create that takes an ID hint as drv
}

// name is what errors call the command. It is formatted only then: under
// emulation a Sprintf per command is a measurable part of a restore.
func (c *command) name() string {
	n := c.op
	if c.nargs > 0 {
		args := make([]any, c.nargs)
		for i := range args {
			args[i] = c.args[i]
		}
		n = fmt.Sprintf(c.op, args...)
	}
	if c.what != "" {
		n = c.what + ": " + n
	}
	return n
}

// Layout: header and attributes, then in, the driver input, out and the
// driver output.
func (c *command) nattrs() int {
	n := 2
	for _, o := range [][]byte{c.drv, c.out, c.uhw} {
		if len(o) > 0 {
			n++
		}
	}
	return n
}

func (c *command) outOff() int { return hdrSize + attrSize*c.nattrs() + len(c.in) + len(c.drv) }
func (c *command) size() int   { return c.outOff() + len(c.out) + len(c.uhw) }

// layout lays the command out in b, zeroed and of its size, for address
// base of the arena's process.
func (c *command) layout(base uint64, b []byte) {
	nattrs := c.nattrs()
	inOff := hdrSize + attrSize*nattrs
	outOff := c.outOff()
	uhwOff := outOff + len(c.out)
	le := binary.LittleEndian
	le.PutUint16(b[0:], uint16(inOff))
	le.PutUint16(b[2:], objDevice)
	le.PutUint16(b[4:], methodInvokeWrite)
	le.PutUint16(b[6:], uint16(nattrs))
	le.PutUint32(b[16:], driverRXE)
	n := 0
	attr := func(id uint16, length int, data uint64) {
		o := hdrSize + attrSize*n
		le.PutUint16(b[o:], id)
		le.PutUint16(b[o+2:], uint16(length))
		le.PutUint64(b[o+8:], data)
		n++
	}
	attr(attrWriteCmd, 8, uint64(c.cmd))
	if len(c.in) <= 8 { // short inputs travel inline
		var v [8]byte
		copy(v[:], c.in)
		attr(attrCoreIn, len(c.in), le.Uint64(v[:]))
	} else {
		attr(attrCoreIn, len(c.in), base+uint64(inOff))
	}
	if len(c.drv) > 0 {
		attr(attrUHWIn, len(c.drv), base+uint64(inOff+len(c.in)))
	}
	if len(c.out) > 0 {
		attr(attrCoreOut, len(c.out), base+uint64(outOff))
	}
	if len(c.uhw) > 0 {
		attr(attrUHWOut, len(c.uhw), base+uint64(uhwOff))
	}
	copy(b[inOff:], c.in)
	copy(b[inOff+len(c.in):], c.drv)
}

// take copies the outputs from the command's laid-out region after a run.
func (c *command) take(region []byte) {
	o := c.outOff()
	copy(c.out, region[o:])
	copy(c.uhw, region[o+len(c.out):])
}

// invoke runs command cmd with core input in and, when not empty, core
// output out and driver output uhw.
func (d *Device) invoke(op string, cmd uint32, in, out, uhw []byte) error {
	return d.run(&command{op: op, cmd: cmd, in: in, out: out, uhw: uhw})
}

// run runs c at the start of the arena.
func (d *Device) run(c *command) error {
	d.takeHint(c)
	if c.size() > d.arena.Size() {
		return fmt.Errorf("verbs: %s needs %d bytes of arena, has %d", c.name(), c.size(), d.arena.Size())
	}
	b := make([]byte, c.size())
	c.layout(d.arena.Addr(), b)
	if err := d.arena.WriteAt(b, 0); err != nil {
		return err
	}
	if _, errno := d.arena.Ioctl(d.FD, verbsIoctl, 0); errno != 0 {
		return &Error{Op: c.name(), Errno: errno}
	}
	o := c.outOff()
	if err := d.arena.ReadAt(b[o:], o); err != nil {
		return err
	}
	c.take(b)
	return nil
}

// AllocPD creates a protection domain and returns its handle.
func (d *Device) AllocPD() (uint32, error) {
	c := pdCommand()
	err := d.run(c)
	return handleOf(c), err
}

func pdCommand() *command {
	return &command{op: "alloc PD", cmd: cmdAllocPD, in: make([]byte, 8), out: make([]byte, 4)}
}

// handleOf is the handle a create command returned: its output's first
// field.
func handleOf(c *command) uint32 { return binary.LittleEndian.Uint32(c.out) }

// DeallocPD destroys the protection domain with handle h.
func (d *Device) DeallocPD(h uint32) error { return d.run(deallocPDCommand(h)) }

func deallocPDCommand(h uint32) *command {
	return &command{op: "dealloc PD %d", args: [2]uint64{uint64(h)}, nargs: 1, cmd: cmdDeallocPD, in: binary.LittleEndian.AppendUint32(nil, h)}
}

// CreateCompChannel creates a completion channel and returns its fd in
// the arena's process.
func (d *Device) CreateCompChannel() (int, error) {
	out := make([]byte, 4)
	if err := d.invoke("create completion channel", cmdCreateCompChannel, make([]byte, 8), out, nil); err != nil {
		return -1, err
	}
	return int(binary.LittleEndian.Uint32(out)), nil
}

// MMInfo is where the process must map a queue (struct mminfo).
type MMInfo struct {
	Offset uint64
	Size   uint32
}

func decodeMMInfo(b []byte) MMInfo {
	return MMInfo{Offset: binary.LittleEndian.Uint64(b), Size: binary.LittleEndian.Uint32(b[8:])}
}

// CQ is a created CQ.
type CQ struct {
	Handle uint32
	CQE    uint32
	Queue  MMInfo
}

// CreateCQ creates a CQ of at least cqe entries; channel is a completion
// channel fd in the arena's process, or -1.
func (d *Device) CreateCQ(userHandle uint64, cqe uint32, channel int32) (CQ, error) {
	c := cqCommand(userHandle, cqe, channel)
	if err := d.run(c); err != nil {
		return CQ{}, err
	}
	return cqOf(c), nil
}

func cqCommand(userHandle uint64, cqe uint32, channel int32) *command {
	le := binary.LittleEndian
	in := make([]byte, 32)
	le.PutUint64(in[8:], userHandle)
	le.PutUint32(in[16:], cqe)
	le.PutUint32(in[24:], uint32(channel))
	return &command{op: "create CQ", cmd: cmdCreateCQ, in: in, out: make([]byte, 8), uhw: make([]byte, 16)}
}

func cqOf(c *command) CQ {
	return CQ{Handle: handleOf(c), CQE: binary.LittleEndian.Uint32(c.out[4:]), Queue: decodeMMInfo(c.uhw)}
}

// QPInit is what a QP is created with.
type QPInit struct {
	UserHandle              uint64
	PD, SendCQ, RecvCQ, SRQ uint32
	MaxSendWR, MaxRecvWR    uint32
	MaxSendSGE, MaxRecvSGE  uint32
	MaxInlineData           uint32
	SQSigAll                bool
	Type                    uint8 // enum ib_qp_type: 2 RC, 3 UC, 4 UD
	UseSRQ                  bool
}

// QP is a created QP.
type QP struct {
	Handle, QPN uint32
	RQ, SQ      MMInfo
}

// CreateQP creates a QP.
func (d *Device) CreateQP(q QPInit) (QP, error) {
	c := qpCommand(q)
	if err := d.run(c); err != nil {
		return QP{}, err
	}
	return qpOf(c), nil
}

func qpCommand(q QPInit) *command {
	le := binary.LittleEndian
	in := make([]byte, 56)
	le.PutUint64(in[8:], q.UserHandle)
	for i, v := range []uint32{q.PD, q.SendCQ, q.RecvCQ, q.SRQ, q.MaxSendWR, q.MaxRecvWR, q.MaxSendSGE, q.MaxRecvSGE, q.MaxInlineData} {
		le.PutUint32(in[16+4*i:], v)
	}
	if q.SQSigAll {
		in[52] = 1
	}
	in[53] = q.Type
	if q.UseSRQ {
		in[54] = 1
	}
	return &command{op: "create QP", cmd: cmdCreateQP, in: in, out: make([]byte, 32), uhw: make([]byte, 32), hintable: true}
}

func qpOf(c *command) QP {
	return QP{Handle: handleOf(c), QPN: binary.LittleEndian.Uint32(c.out[4:]), RQ: decodeMMInfo(c.uhw), SQ: decodeMMInfo(c.uhw[16:])}
}

// MR is a registered memory region.
type MR struct {
	Handle, LKey, RKey uint32
}

// RegMR registers length bytes at start (in the arena's process) for
// access (IB_ACCESS_*), with iova as the address peers use.
func (d *Device) RegMR(pd uint32, start, length, iova uint64, access uint32) (MR, error) {
	c := mrCommand(pd, start, length, iova, access)
	if err := d.run(c); err != nil {
		return MR{}, err
	}
	return mrOf(c), nil
}

func mrCommand(pd uint32, start, length, iova uint64, access uint32) *command {
	le := binary.LittleEndian
	in := make([]byte, 40)
	le.PutUint64(in[8:], start)
	le.PutUint64(in[16:], length)
	le.PutUint64(in[24:], iova)
	le.PutUint32(in[32:], pd)
	le.PutUint32(in[36:], access)
	return &command{op: "register MR", cmd: cmdRegMR, in: in, out: make([]byte, 12), hintable: true}
}

func mrOf(c *command) MR {
	le := binary.LittleEndian
	return MR{Handle: handleOf(c), LKey: le.Uint32(c.out[4:]), RKey: le.Uint32(c.out[8:])}
}

// SRQ is a created shared receive queue.
type SRQ struct {
	Handle, SRQNum uint32
	Queue          MMInfo
}

// CreateSRQ creates an SRQ of at least maxWR entries of maxSGE elements.
func (d *Device) CreateSRQ(userHandle uint64, pd, maxWR, maxSGE, limit uint32) (SRQ, error) {
	c := srqCommand(userHandle, pd, maxWR, maxSGE, limit)
	if err := d.run(c); err != nil {
		return SRQ{}, err
	}
	return srqOf(c), nil
}

func srqCommand(userHandle uint64, pd, maxWR, maxSGE, limit uint32) *command {
	le := binary.LittleEndian
	in := make([]byte, 32)
	le.PutUint64(in[8:], userHandle)
	le.PutUint32(in[16:], pd)
	le.PutUint32(in[20:], maxWR)
	le.PutUint32(in[24:], maxSGE)
	le.PutUint32(in[28:], limit)
	return &command{op: "create SRQ", cmd: cmdCreateSRQ, in: in, out: make([]byte, 16), uhw: make([]byte, 24), hintable: true}
}

func srqOf(c *command) SRQ {
	return SRQ{Handle: handleOf(c), SRQNum: binary.LittleEndian.Uint32(c.uhw[16:]), Queue: decodeMMInfo(c.uhw)}
}

// AHAttr is where an address handle sends.
type AHAttr struct {
	DGID                              [16]byte
	FlowLabel                         uint32
	SGIDIndex, HopLimit, TrafficClass uint8
	PortNum                           uint8
}

// AH is a created address handle.
type AH struct{ Handle, AHNum uint32 }

// CreateAH creates an address handle in PD pd.
func (d *Device) CreateAH(userHandle uint64, pd uint32, a AHAttr) (AH, error) {
	c := ahCommand(userHandle, pd, a)
	if err := d.run(c); err != nil {
		return AH{}, err
	}
	return ahOf(c), nil
}

func ahCommand(userHandle uint64, pd uint32, a AHAttr) *command {
	le := binary.LittleEndian
	in := make([]byte, 56)
	le.PutUint64(in[8:], userHandle)
	le.PutUint32(in[16:], pd)
	// struct ib_uverbs_ah_attr at 24: global route, then dlid, sl, ...
	copy(in[24:40], a.DGID[:])
	le.PutUint32(in[40:], a.FlowLabel)
	in[44], in[45], in[46] = a.SGIDIndex, a.HopLimit, a.TrafficClass
	in[53], in[54] = 1, a.PortNum // is_global: RoCE always routes by GID
	return &command{op: "create AH", cmd: cmdCreateAH, in: in, out: make([]byte, 4), uhw: make([]byte, 8), hintable: true}
}

func ahOf(c *command) AH { return AH{Handle: handleOf(c), AHNum: binary.LittleEndian.Uint32(c.uhw)} }

// MW is an allocated memory window.
type MW struct{ Handle, RKey uint32 }

// AllocMW allocates a memory window of type typ (1 or 2) in PD pd.
func (d *Device) AllocMW(pd uint32, typ uint8) (MW, error) {
	c := mwCommand(pd, typ)
	if err := d.run(c); err != nil {
		return MW{}, err
	}
	return mwOf(c), nil
}

func mwCommand(pd uint32, typ uint8) *command {
	in := make([]byte, 16)
	binary.LittleEndian.PutUint32(in[8:], pd)
	in[12] = typ
	return &command{op: "alloc MW", cmd: cmdAllocMW, in: in, out: make([]byte, 8), hintable: true}
}

func mwOf(c *command) MW { return MW{Handle: handleOf(c), RKey: binary.LittleEndian.Uint32(c.out[4:])} }

// QP attribute mask bits (enum ib_qp_attr_mask).
const (
	QPState          = 1 << 0
	QPAccessFlags    = 1 << 3
	QPPKeyIndex      = 1 << 4
	QPPort           = 1 << 5
	QPQKey           = 1 << 6
	QPAV             = 1 << 7
	QPPathMTU        = 1 << 8
	QPTimeout        = 1 << 9
	QPRetryCnt       = 1 << 10
	QPRNRRetry       = 1 << 11
	QPRQPSN          = 1 << 12
	QPMaxQPRDAtomic  = 1 << 13
	QPMinRNRTimer    = 1 << 15
	QPSQPSN          = 1 << 16
	QPMaxDestRDAtom  = 1 << 17
	QPDestQPN        = 1 << 20
	cmdModifyQP      = 26
	modifyQPCmdBytes = 112
)

// QPAttr is what ModifyQP sets, the fields Mask names.
type QPAttr struct {
	Mask                         uint32
	State                        uint8 // enum ib_qp_state: 1 INIT, 2 RTR, 3 RTS
	PathMTU                      uint8 // enum ib_mtu
	QKey, RQPSN, SQPSN, DestQPN  uint32
	AccessFlags                  uint32
	PKeyIndex                    uint16
	PortNum                      uint8
	MaxRDAtomic, MaxDestRDAtomic uint8
	MinRNRTimer, Timeout         uint8
	RetryCnt, RNRRetry           uint8
	DGID                         [16]byte
	FlowLabel                    uint32
	SGIDIndex, HopLimit          uint8
	TrafficClass                 uint8
}

// ModifyQP changes the attributes of the QP with handle h.
func (d *Device) ModifyQP(h uint32, a QPAttr) error { return d.run(modifyQPCommand(h, a)) }

func modifyQPCommand(h uint32, a QPAttr) *command {
	le := binary.LittleEndian
	// The command and its input in one allocation: a restore queues
	// three per QP.
	m := new(struct {
		command
		in [modifyQPCmdBytes]byte
	})
	in := m.in[:]
	// struct ib_uverbs_qp_dest at 0: the primary path.
	copy(in[0:16], a.DGID[:])
	le.PutUint32(in[16:], a.FlowLabel)
	in[24], in[25], in[26] = a.SGIDIndex, a.HopLimit, a.TrafficClass
	in[30], in[31] = 1, a.PortNum // is_global: RoCE always routes by GID
	le.PutUint32(in[64:], h)
	le.PutUint32(in[68:], a.Mask)
	le.PutUint32(in[72:], a.QKey)
	le.PutUint32(in[76:], a.RQPSN)
	le.PutUint32(in[80:], a.SQPSN)
	le.PutUint32(in[84:], a.DestQPN)
	le.PutUint32(in[88:], a.AccessFlags)
	le.PutUint16(in[92:], a.PKeyIndex)
	in[96], in[98] = a.State, a.PathMTU
	in[101], in[102], in[103] = a.MaxRDAtomic, a.MaxDestRDAtomic, a.MinRNRTimer
	in[104], in[105], in[106], in[107] = a.PortNum, a.Timeout, a.RetryCnt, a.RNRRetry
	m.command = command{op: "modify QP %d to state %d", args: [2]uint64{uint64(h), uint64(a.State)}, nargs: 2, cmd: cmdModifyQP, in: in}
	return &m.command
}
