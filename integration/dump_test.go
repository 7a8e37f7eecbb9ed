// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/rdma"
)

func dumpOf(t *testing.T, out string) *rdma.ContextDump {
	t.Helper()
	var ds []*rdma.ContextDump
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("%v in:\n%s", err, out)
	}
	if len(ds) != 1 {
		t.Fatalf("%d contexts, want 1:\n%s", len(ds), out)
	}
	return ds[0]
}

// migros rxe dump reports every object of an unmodified process with what
// a restore needs. rdmacheck's objects are known: one PD, one CQ shared by
// send and receive, one MR of 64 × 4 KiB, one RC QP with timeout 14 and
// retry counts 7; its queues are mapped into the process at the offsets
// the dump gives.
func TestDumpObjects(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	pair := startRDMACheck(ctx, t, peer, src, "-R")
	pid, peerPID := pidOf(ctx, t, src, "rdmacheck"), pidOf(ctx, t, peer, "rdmacheck")
	peerQPN := listQPs(ctx, t, peer, peerPID)[0].QPN
	resume := stopQPs(ctx, t, src, pid)

	out, err := src.Output(ctx, "migros", "rxe", "dump", "--pid", pid)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := src.Output(ctx, "cat", "/proc/"+pid+"/maps")
	if err != nil {
		t.Fatal(err)
	}
	peerOut, err := peer.Output(ctx, "migros", "rxe", "dump", "--pid", peerPID)
	if err != nil {
		t.Fatal(err)
	}
	if err := resume(ctx); err != nil {
		t.Fatal(err)
	}
	finishRDMACheck(t, pair)

	d := dumpOf(t, out)
	if len(d.PDs) != 1 || len(d.CQs) != 1 || len(d.QPs) != 1 || len(d.MRs) != 1 ||
		len(d.SRQs)+len(d.MWs)+len(d.AHs) != 0 {
		t.Fatalf("objects: %d PD, %d CQ, %d QP, %d MR, %d SRQ, %d MW, %d AH; want 1 of the first four",
			len(d.PDs), len(d.CQs), len(d.QPs), len(d.MRs), len(d.SRQs), len(d.MWs), len(d.AHs))
	}
	qp, cq, mr := d.QPs[0], d.CQs[0], d.MRs[0]
	peerIP := netip.MustParseAddr(peer.Addr()).As4()
	checks := []struct {
		what      string
		got, want any
	}{
		{"QP type (RC)", qp.QPType, uint32(2)},
		{"QP state (RTS)", qp.QPState, uint32(3)},
		{"QP migration state", qp.Mig, rdma.MigStopped},
		{"QP PD", qp.PDHandle, d.PDs[0]},
		{"QP send CQ", qp.SendCQHandle, cq.Handle},
		{"QP recv CQ", qp.RecvCQHandle, cq.Handle},
		{"QP SRQ", qp.SRQHandle, uint32(rdma.NoHandle)},
		{"QP dest QPN", qp.DestQPN, peerQPN},
		{"QP timeout", qp.Timeout, uint8(14)},
		{"QP retry count", qp.RetryCnt, uint8(7)},
		{"QP RNR retry", qp.RNRRetry, uint8(7)},
		{"QP max send WR", qp.MaxSendWR >= 64, true},
		{"QP token drawn at stop", qp.MigToken != 0, true},
		{"QP sent something", qp.ReqPSN != qp.SQPSN, true},
		{"QP destination IP", [4]byte(qp.AV.DGID[12:]), peerIP},
		{"QP user_handle set", qp.UserHandle != 0, true},
		{"CQ user_handle set", cq.UserHandle != 0, true},
		{"CQ entries", cq.CQE >= 128, true},
		{"MR length", mr.Length, uint64(64 * 4096)},
		{"MR PD", mr.PDHandle, d.PDs[0]},
		{"MR iova", mr.IOVA, mr.Start},
		{"MR local write", mr.Access & 1, uint32(1)},
		{"MR lkey index", mr.LKey>>8 != 0, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	// The SQ, RQ and CQ buffers are mappings of the uverbs file at the
	// offsets the dump reports.
	for name, q := range map[string]rdma.Queue{"SQ": qp.SQ, "RQ": qp.RQ, "CQ": cq.Queue} {
		if q.BufSize == 0 || !mappedAt(maps, q.Offset) {
			t.Errorf("%s %+v: no uverbs mapping at offset %#x in:\n%s", name, q, q.Offset, maps)
		}
	}
	if !inMapping(maps, mr.Start) {
		t.Errorf("MR start %#x is in no mapping of the process", mr.Start)
	}

	// The peer's receive-only QP is in RTR and not stopped.
	p := dumpOf(t, peerOut)
	if len(p.QPs) != 1 || p.QPs[0].QPState != 2 || p.QPs[0].Mig != rdma.MigNone || p.QPs[0].DestQPN != qp.QPN {
		t.Errorf("peer QPs: %+v", p.QPs)
	}
}

// mappedAt says whether maps has a mapping of a uverbs file at offset.
func mappedAt(maps string, offset uint64) bool {
	for _, l := range strings.Split(maps, "\n") {
		f := strings.Fields(l)
		if len(f) == 6 && strings.HasPrefix(f[5], "/dev/infiniband/uverbs") && f[2] == fmt.Sprintf("%08x", offset) {
			return true
		}
	}
	return false
}

// inMapping says whether addr lies in a mapping of maps.
func inMapping(maps string, addr uint64) bool {
	for _, l := range strings.Split(maps, "\n") {
		var lo, hi uint64
		if _, err := fmt.Sscanf(l, "%x-%x", &lo, &hi); err == nil && lo <= addr && addr < hi {
			return true
		}
	}
	return false
}
