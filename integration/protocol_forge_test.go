// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/perftest"
	"github.com/migros/migros/rdma"
)

// An attacker on a third host (dst) forges MigrOS packets against a paused
// connection between src and peer: a RESUME with a valid ICRC, the right
// QPNs and PSN but a wrong token, which would redirect peer's QP to dst if
// accepted; the same with a broken ICRC; and a RESUME_ACK that would end
// src's stop. Each is counted as rejected, nothing changes state, and the
// transfer completes once src is really resumed.
func TestForgedResume(t *testing.T) {
	for try := 1; try <= 3; try++ {
		if !forgedResume(t) {
			return
		}
		t.Logf("perftest could not calibrate its clock; running the scenario again")
	}
	t.Fatal("perftest could not calibrate its clock three times")
}

func forgedResume(t *testing.T) (again bool) {
	ctx := testContext(t, 10*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const iters, size = 5000, 65536
	argv := []string{"ib_write_bw", "-n", strconv.Itoa(iters), "-s", strconv.Itoa(size)}
	pair, err := lab.StartPair(ctx, src, argv, peer, append(argv, src.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Kill()
	client, server := pair.Client, pair.Server
	output := func() string { return pair.ClientOut.String() + pair.ServerOut.String() }
	time.Sleep(5 * time.Second)
	if st := stateOf(client, server); st != "" {
		if perftest.CalibrationFailed(output()) {
			return true
		}
		t.Fatalf("transfer ended before the stop (%s):\n%s", st, output())
	}

	srcPID, peerPID := pidOf(ctx, t, src, argv[0]), pidOf(ctx, t, peer, argv[0])
	resume := stopQPs(ctx, t, src, srcPID)
	victim := waitPaused(ctx, t, peer, peerPID)
	stoppedQP := listQPs(ctx, t, src, srcPID)[0]
	t.Logf("peer QP %#x paused: %+v", victim.QPN, victim)

	forged := []struct {
		name           string
		on             *lab.Guest // whose counters move
		args           []string
		rcvd, rejected int64
	}{
		{"RESUME with a wrong token", peer, []string{
			"--to", peer.Addr(), "--qpn", itoa(victim.QPN), "--src-qpn", itoa(victim.DestQPN),
			"--psn", itoa(victim.CompPSN), "--token", "0x5eed5eed5eed5eed"}, 1, 1},
		{"RESUME with a wrong ICRC", peer, []string{
			"--to", peer.Addr(), "--qpn", itoa(victim.QPN), "--src-qpn", itoa(victim.DestQPN),
			"--psn", itoa(victim.CompPSN), "--token", "0x5eed5eed5eed5eed", "--bad-icrc"}, 0, 1},
		{"RESUME_ACK to the stopped QP", src, []string{
			"--type", "resume-ack", "--to", src.Addr(), "--qpn", itoa(stoppedQP.QPN),
			"--src-qpn", itoa(stoppedQP.DestQPN), "--psn", itoa(stoppedQP.RespPSN), "--token", "42"}, 0, 1},
	}
	for _, f := range forged {
		before := counters(ctx, t, f.on)
		out, err := dst.Output(ctx, append([]string{"migros-lab", "forge"}, f.args...)...)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		// The receive path handles the packet in softirq, before the
		// sender's next command can run; allow for a slow guest anyway.
		var after map[string]int64
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			after = counters(ctx, t, f.on)
			if delta(after, before, "mig_resume_rejected") >= f.rejected || time.Now().After(deadline) {
				break
			}
		}
		rcvd, rejected := delta(after, before, "mig_resume_rcvd"), delta(after, before, "mig_resume_rejected")
		if rcvd != f.rcvd || rejected != f.rejected {
			t.Errorf("%s (%s): %s counts rcvd +%d rejected +%d, want +%d +%d",
				f.name, strings.TrimSpace(out), f.on.Name, rcvd, rejected, f.rcvd, f.rejected)
		}
	}
	for _, q := range listQPs(ctx, t, peer, peerPID) {
		if q.QPN == victim.QPN && (q.Mig != rdma.MigPaused || q.DestQPN != victim.DestQPN) {
			t.Errorf("peer QP after the forgeries: %+v", q)
		}
	}
	for _, q := range listQPs(ctx, t, src, srcPID) {
		if q.Mig != rdma.MigStopped || q.Resuming {
			t.Errorf("src QP after the forgeries: %+v", q)
		}
	}
	if st := stateOf(client, server); st != "" {
		t.Fatalf("transfer ended after the forgeries (%s):\n%s", st, output())
	}

	// The real resume still works, and peer still sends to src.
	before := counters(ctx, t, peer)
	if err := resume(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-client.Done():
	case <-time.After(2 * time.Minute):
		t.Fatalf("transfer did not finish 2 minutes after the resume:\n%s", output())
	}
	cerr, serr := client.Wait(), server.Wait()
	if (cerr != nil || serr != nil) && perftest.CalibrationFailed(output()) {
		return true
	}
	if cerr != nil || serr != nil {
		t.Fatalf("after resume: client %v, server %v:\n%s", cerr, serr, output())
	}
	checkBW(iters, size)(t, pair.ClientOut.String())
	after := counters(ctx, t, peer)
	if d := delta(after, before, "mig_resume_rejected"); d != 0 {
		t.Errorf("peer rejected %d RESUMEs from the real src", d)
	}
	if d := delta(after, before, "mig_resume_rcvd"); d < 1 {
		t.Errorf("peer received %d RESUMEs from the real src", d)
	}
	return false
}

// waitPaused returns the first QP of process pid in g to become Paused.
func waitPaused(ctx context.Context, t *testing.T, g *lab.Guest, pid string) rdma.QPInfo {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		for _, q := range listQPs(ctx, t, g, pid) {
			if q.Mig == rdma.MigPaused {
				return q
			}
		}
	}
	t.Fatalf("%s: no QP of process %s paused: %+v", g.Name, pid, listQPs(ctx, t, g, pid))
	return rdma.QPInfo{}
}

// A RESUME from a new address moves the peer there: its next packets, here
// the RESUME_ACK, go to the new host, with the new IP and MAC. dst plays a
// restored QP towards a peer that never paused (it only receives, so it
// accepts on the PSN check alone, see docs/protocol.md); the real src then
// resumes from its own address, moves the peer back, and the stream
// completes with every message checked.
func TestResumeMovesPeer(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	pair := startRDMACheck(ctx, t, peer, src)
	srcPID, peerPID := pidOf(ctx, t, src, "rdmacheck"), pidOf(ctx, t, peer, "rdmacheck")
	resume := stopQPs(ctx, t, src, srcPID)
	time.Sleep(time.Second) // let the peer's last ACKs drain
	q := listQPs(ctx, t, peer, peerPID)[0]
	if q.Mig != rdma.MigNone {
		t.Fatalf("peer QP should not pause, it only receives: %+v", q)
	}

	beforeDst, beforePeer := counters(ctx, t, dst), counters(ctx, t, peer)
	out, err := dst.Output(ctx, "migros-lab", "forge", "--to", peer.Addr(), "--qpn", itoa(q.QPN),
		"--src-qpn", itoa(q.DestQPN), "--psn", itoa(q.CompPSN), "--token", "7")
	if err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(out))
	// dst has no such QP: it counts the peer's RESUME_ACK as rejected.
	var afterDst map[string]int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		afterDst = counters(ctx, t, dst)
		if delta(afterDst, beforeDst, "mig_resume_rejected") > 0 || time.Now().After(deadline) {
			break
		}
	}
	afterPeer := counters(ctx, t, peer)
	if d := delta(afterPeer, beforePeer, "mig_resume_rcvd") - delta(afterPeer, beforePeer, "mig_resume_rejected"); d != 1 {
		t.Errorf("peer accepted %d RESUMEs from dst, want 1", d)
	}
	if d := delta(afterDst, beforeDst, "mig_resume_rejected"); d != 1 {
		t.Fatalf("dst got %d RESUME_ACKs from the moved peer, want 1", d)
	}

	if err := resume(ctx); err != nil {
		t.Fatal(err)
	}
	finishRDMACheck(t, pair)
}
