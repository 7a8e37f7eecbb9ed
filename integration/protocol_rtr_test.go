// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"testing"
	"time"

	"github.com/migros/migros/rdma"
)

// ibQPSRTR is enum ib_qp_state's RTR.
const ibQPSRTR = 2

// The protocol works when a side of the connection never reaches RTS:
// rdmacheck -R keeps its receiving QP in RTR. Either src's stopped QP is the
// RTR one (it must answer with stopped NAKs and send RESUME from RTR), or
// src sends and its peer is the RTR one (it must accept a RESUME without
// ever having paused). Every message is checked by the receiver.
func TestResumeRTR(t *testing.T) {
	tests := []struct {
		name      string
		rtrOnSrc  bool // src runs the RTR-only receiver, peer sends
		peerPause bool
	}{
		{"stopped QP in RTR", true, true},
		{"peer QP in RTR", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			src, peer := guest(t, "src"), guest(t, "peer")
			server, client := peer, src
			if tt.rtrOnSrc {
				server, client = src, peer
			}
			beforeSrc, beforePeer := counters(ctx, t, src), counters(ctx, t, peer)
			pair := startRDMACheck(ctx, t, server, client, "-R")

			srcPID, peerPID := pidOf(ctx, t, src, "rdmacheck"), pidOf(ctx, t, peer, "rdmacheck")
			resume := stopQPs(ctx, t, src, srcPID)
			rtrG, rtrPID := peer, peerPID
			if tt.rtrOnSrc {
				rtrG, rtrPID = src, srcPID
			}
			for _, q := range listQPs(ctx, t, rtrG, rtrPID) {
				if q.QPState != ibQPSRTR {
					t.Fatalf("%s's receiving QP is in state %d, not RTR: %+v", rtrG.Name, q.QPState, q)
				}
			}
			if tt.peerPause {
				q := waitPaused(ctx, t, peer, peerPID)
				t.Logf("peer QP %#x paused against src's RTR QP", q.QPN)
			}
			time.Sleep(10 * time.Second)
			for _, q := range listQPs(ctx, t, peer, peerPID) {
				if want := map[bool]rdma.MigState{true: rdma.MigPaused, false: rdma.MigNone}[tt.peerPause]; q.Mig != want {
					t.Fatalf("peer QP after 10 s: %s, want %s: %+v", q.Mig, want, q)
				}
			}

			if err := resume(ctx); err != nil {
				t.Fatal(err)
			}
			finishRDMACheck(t, pair)
			afterSrc, afterPeer := counters(ctx, t, src), counters(ctx, t, peer)
			if d := delta(afterSrc, beforeSrc, "mig_resume_sent"); d < 1 {
				t.Errorf("src sent %d RESUMEs", d)
			}
			if d := delta(afterPeer, beforePeer, "mig_resume_rcvd"); d < 1 {
				t.Errorf("peer received %d RESUMEs", d)
			}
			for _, c := range []string{"mig_resume_rejected", "mig_pause_timeout"} {
				if d := delta(afterPeer, beforePeer, c) + delta(afterSrc, beforeSrc, c); d != 0 {
					t.Errorf("counter %s rose by %d", c, d)
				}
			}
			if tt.peerPause {
				if d := delta(afterPeer, beforePeer, "mig_paused_ms"); d < 8000 {
					t.Errorf("peer paused %d ms in all", d)
				}
			}
		})
	}
}
