// SPDX-License-Identifier: Apache-2.0

package verbs

import (
	"errors"
	"syscall"
	"testing"
)

// batchArena runs a batch as the task's loop does: in order, stopping
// after the first call that fails (the call at failAt, if any).
type batchArena struct {
	fakeArena
	failAt  int // 1-based index over all calls run; 0: none fails
	calls   int
	batches [][]IoctlAt
	handles []uint32 // the handle each create returned, by seq
}

func (f *batchArena) IoctlBatch(fd int, calls []IoctlAt, scratch int) (int, syscall.Errno, error) {
	f.batches = append(f.batches, calls)
	for i, c := range calls {
		if c.Off%8 != 0 || c.Off >= scratch || scratch+BatchEntrySize*len(calls) > len(f.mem) {
			return i, 0, errors.New("call laid out over the scratch or unaligned")
		}
		if f.calls++; f.calls == f.failAt {
			return i + 1, syscall.EBUSY, nil
		}
		if _, errno := f.Ioctl(fd, c.Req, c.Off); errno != 0 {
			return i + 1, errno, nil
		}
		// Each create returns a distinct handle: seq in the first
		// output byte.
		if a, ok := f.attrs[attrCoreOut]; ok {
			f.mem[a[1]-f.Addr()] = f.seq
		}
	}
	return len(calls), 0, nil
}

func TestBatch(t *testing.T) {
	for _, tc := range []struct {
		name      string
		arena     int
		failAt    int
		wantDone  int // done callbacks run
		wantRuns  int // IoctlBatch calls
		wantError string
	}{
		{name: "all in one run", arena: 4096, wantDone: 7, wantRuns: 1},
		{name: "arena full: several runs", arena: 600, wantDone: 7, wantRuns: 3},
		{name: "a failure stops the batch", arena: 4096, failAt: 4, wantDone: 2, wantRuns: 1,
			wantError: "verbs: QP 7: create QP: device or resource busy"},
		{name: "a failure in a later run", arena: 600, failAt: 7, wantDone: 4, wantRuns: 3,
			wantError: "verbs: PD 2: alloc PD: device or resource busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &batchArena{fakeArena: fakeArena{mem: make([]byte, tc.arena)}, failAt: tc.failAt}
			d := &Device{FD: 3, arena: a}
			b, err := d.Batch()
			if err != nil {
				t.Fatal(err)
			}
			var got []uint32
			pd := func(h uint32) error { got = append(got, h); return nil }
			qp := func(q QP) error { got = append(got, q.Handle); return nil }
			// Seven commands with a done, two without.
			steps := []func() error{
				func() error { return b.DeallocPD(9) },
				func() error { return b.AllocPD("PD 0", pd) },
				func() error { return b.CreateQP("QP 5", QPInit{Type: 2}, qp) },
				func() error { return b.CreateQP("QP 7", QPInit{Type: 2}, qp) },
				func() error { return b.DeallocPD(8) },
				func() error { return b.AllocPD("PD 1", pd) },
				func() error { return b.AllocPD("PD 2", pd) },
				func() error { return b.CreateQP("QP 9", QPInit{Type: 2}, qp) },
				func() error { return b.AllocPD("PD 3", pd) },
			}
			err = nil
			for _, s := range steps {
				if err = s(); err != nil {
					break
				}
			}
			if err == nil {
				err = b.Flush()
			}
			if tc.wantError == "" && err != nil || tc.wantError != "" && (err == nil || err.Error() != tc.wantError) {
				t.Fatalf("error %v, want %q", err, tc.wantError)
			}
			if len(got) != tc.wantDone {
				t.Fatalf("%d done callbacks ran (%v), want %d", len(got), got, tc.wantDone)
			}
			// Each done saw its own command's output: distinct handles,
			// in the order the commands ran.
			for i := 1; i < len(got); i++ {
				if got[i]&0xff <= got[i-1]&0xff || got[i]>>8 != 0x040302 {
					t.Fatalf("handles %x not each command's own", got)
				}
			}
			if len(a.batches) != tc.wantRuns {
				t.Fatalf("%d runs, want %d", len(a.batches), tc.wantRuns)
			}
			// Nothing queued after a failure runs, and a flush after it
			// has nothing left.
			if err := b.Flush(); err != nil || len(a.batches) != tc.wantRuns {
				t.Fatalf("second flush: %v, %d runs", err, len(a.batches))
			}
		})
	}
}

func TestBatchNeedsABatcher(t *testing.T) {
	d := &Device{FD: 3, arena: &fakeArena{mem: make([]byte, 4096)}}
	if _, err := d.Batch(); err == nil {
		t.Fatal("a batch on an arena that cannot run one")
	}
}
