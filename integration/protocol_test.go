// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
	"github.com/migros/migros/integration/perftest"
	"github.com/migros/migros/rdma"
)

// stopFor is how long the protocol tests keep a QP Stopped: longer than a
// finite retry budget would last (7 retries of rxe's default ~67 ms
// timeout) by far.
const stopFor = 15 * time.Second

type qpList []struct {
	Path string        `json:"path"`
	QPs  []rdma.QPInfo `json:"qps"`
}

// pidOf returns the pid of the program called name in g.
func pidOf(ctx context.Context, t testing.TB, g *lab.Guest, name string) string {
	t.Helper()
	out, err := g.Output(ctx, "pgrep", "-x", name)
	if err != nil {
		t.Fatalf("%s: %s is not running: %v", g.Name, name, err)
	}
	return strings.Fields(out)[0]
}

func listQPs(ctx context.Context, t testing.TB, g *lab.Guest, pid string) []rdma.QPInfo {
	t.Helper()
	out, err := g.Output(ctx, "migros", "rxe", "list", "--json", "--pid", pid)
	if err != nil {
		t.Fatal(err)
	}
	var l qpList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	var qps []rdma.QPInfo
	for _, c := range l {
		qps = append(qps, c.QPs...)
	}
	if len(qps) == 0 {
		t.Fatalf("%s: process %s has no RC QP", g.Name, pid)
	}
	return qps
}

// stopQPs stops every QP of process pid in g from a separate process
// (`migros rxe stop`) and returns the matching resume. If the test ends
// without resuming, a cleanup resumes, so nothing is left stopped.
func stopQPs(ctx context.Context, t *testing.T, g *lab.Guest, pid string) (resume func(context.Context) error) {
	t.Helper()
	out, err := g.Output(ctx, "migros", "rxe", "stop", "--pid", pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(out))
	done := false
	resume = func(ctx context.Context) error {
		if done {
			return nil
		}
		done = true
		out, err := g.Output(ctx, "migros", "rxe", "resume", "--pid", pid)
		if err == nil {
			t.Log(strings.TrimSpace(out))
		}
		return err
	}
	t.Cleanup(func() { _ = resume(context.Background()) })
	return resume
}

// rdmacheckMsgs messages of 4 KiB, one every 5 ms: about 15 s of traffic
// without a stop.
const rdmacheckMsgs = "3000"

// startRDMACheck starts an rdmacheck stream from client to server (which
// gets serverFlags too) and returns once messages flow.
func startRDMACheck(ctx context.Context, t *testing.T, server, client *lab.Guest, serverFlags ...string) *lab.Pair {
	t.Helper()
	args := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	pair, err := lab.StartPair(ctx, server, append(args, serverFlags...), client, append(args, "-w", "5000", server.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pair.Kill)
	time.Sleep(3 * time.Second)
	if st := stateOf(pair.Client, pair.Server); st != "" {
		t.Fatalf("transfer ended before the stop (%s):\nclient:\n%s\nserver:\n%s", st, pair.ClientOut, pair.ServerOut)
	}
	return pair
}

// finishRDMACheck waits for an rdmacheck pair to end after a resume: both
// sides must succeed and the server must have checked every message.
func finishRDMACheck(t *testing.T, pair *lab.Pair) {
	t.Helper()
	select {
	case <-pair.Client.Done():
	case <-time.After(2 * time.Minute):
		t.Fatalf("transfer did not finish 2 minutes after the resume:\nclient:\n%s\nserver:\n%s", pair.ClientOut, pair.ServerOut)
	}
	if cerr, serr := pair.Client.Wait(), pair.Server.Wait(); cerr != nil || serr != nil {
		t.Fatalf("client %v, server %v\nclient:\n%s\nserver:\n%s", cerr, serr, pair.ClientOut, pair.ServerOut)
	}
	if out := pair.ServerOut.String(); !strings.Contains(out, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("server did not check every message:\n%s", out)
	}
	t.Logf("%s%s", pair.ServerOut, pair.ClientOut)
}

// counters reads the mig_* counters of rxe0.
func counters(ctx context.Context, t *testing.T, g *lab.Guest) map[string]int64 {
	t.Helper()
	out, err := g.Output(ctx, "rdma", "statistic", "show", "link", "rxe0/1")
	if err != nil {
		t.Fatal(err)
	}
	c := map[string]int64{}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if strings.HasPrefix(f[i], "mig_") {
			v, err := strconv.ParseInt(f[i+1], 10, 64)
			if err == nil {
				c[f[i]] = v
			}
		}
	}
	if _, ok := c["mig_stopped_nak_sent"]; !ok {
		t.Fatalf("%s: no MigrOS counters in:\n%s", g.Name, out)
	}
	return c
}

func delta(after, before map[string]int64, name string) int64 { return after[name] - before[name] }

// A program pair runs between src and peer; src's QPs are stopped from a
// separate process for stopFor, then resumed, and the transfer finishes with
// no error (and, for ibv_rc_pingpong, with every buffer validated). Where
// peer sends during the stop it must be Paused, with counters and query
// saying so; where only src sends, peer has nothing to pause for.
func TestStopPauseResume(t *testing.T) {
	// Exchanges of 4 ms on the lab these were sized on (12 s, past the
	// stop); more on a faster one.
	iters := scaled(t, 3000)
	n := fmt.Sprint(iters)
	// Enough 64 KiB messages to span the stop (10-20 s of traffic in
	// the lab).
	dur := []string{"-n", "3000", "-s", "65536"}
	tests := []struct {
		name      string
		argv      []string // the client gets the server's address appended
		clientOn  string   // "src" or "peer"
		peerSends bool
		check     func(t *testing.T, out string)
	}{
		// -c: every received buffer is checked.
		{"ibv_rc_pingpong src client", []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", n}, "src", false, checkPingpong(iters)},
		{"ib_write_bw bidirectional", append([]string{"ib_write_bw", "-b"}, dur...), "src", true, checkBW(3000, 65536)},
		{"ib_send_bw peer sends", append([]string{"ib_send_bw"}, dur...), "peer", true, checkBW(3000, 65536)},
		{"ib_write_bw peer sends", append([]string{"ib_write_bw"}, dur...), "peer", true, checkBW(3000, 65536)},
		{"ib_read_bw peer reads", append([]string{"ib_read_bw"}, dur...), "peer", true, checkBW(3000, 65536)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// perftest may void a run under emulation (clock calibration);
			// such a run is repeated, any other failure is final.
			for try := 1; try <= 3; try++ {
				if !stopPauseResume(t, tt.argv, tt.clientOn, tt.peerSends, tt.check) {
					return
				}
				t.Logf("perftest could not calibrate its clock; running the scenario again")
			}
			t.Fatal("perftest could not calibrate its clock three times")
		})
	}
}

// stopPauseResume runs one scenario; it returns true, asserting nothing
// further, if perftest voided the run (see perftest.CalibrationFailed).
func stopPauseResume(t *testing.T, argv []string, clientOn string, peerSends bool, check func(*testing.T, string)) (again bool) {
	ctx := testContext(t, 10*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	beforeSrc, beforePeer := counters(ctx, t, src), counters(ctx, t, peer)
	serverG, clientG := peer, src
	if clientOn == "peer" {
		serverG, clientG = src, peer
	}

	pair, err := lab.StartPair(ctx, serverG, argv, clientG, append(argv, serverG.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Kill()
	client, server, cout, sout := pair.Client, pair.Server, pair.ClientOut, pair.ServerOut
	// Let traffic flow first.
	time.Sleep(5 * time.Second)
	if st := stateOf(client, server); st != "" {
		if perftest.CalibrationFailed(cout.String() + sout.String()) {
			return true
		}
		t.Fatalf("transfer ended before the stop (%s): client:\n%s\nserver:\n%s", st, cout.String(), sout.String())
	}
	name := argv[0]
	srcPID, peerPID := pidOf(ctx, t, src, name), pidOf(ctx, t, peer, name)

	resume := stopQPs(ctx, t, src, srcPID)
	stopped := time.Now()
	for _, q := range listQPs(ctx, t, src, srcPID) {
		if q.Mig != rdma.MigStopped {
			t.Errorf("src QP %#x is %s after stop", q.QPN, q.Mig)
		}
	}

	// The peer pauses as soon as it sends to the stopped QP.
	var paused []rdma.QPInfo
	for time.Since(stopped) < 10*time.Second && len(paused) == 0 {
		time.Sleep(time.Second)
		for _, q := range listQPs(ctx, t, peer, peerPID) {
			if q.Mig == rdma.MigPaused {
				paused = append(paused, q)
			}
		}
	}
	if peerSends && len(paused) == 0 {
		t.Fatalf("peer sends but its QPs did not pause: %+v", listQPs(ctx, t, peer, peerPID))
	}
	time.Sleep(stopFor - time.Since(stopped))
	if st := stateOf(client, server); st != "" {
		t.Fatalf("transfer ended while stopped (%s): client:\n%s\nserver:\n%s", st, cout.String(), sout.String())
	}
	for _, q := range listQPs(ctx, t, peer, peerPID) {
		for _, p := range paused {
			if q.QPN == p.QPN && (q.Mig != rdma.MigPaused || q.PausedMS < uint64((stopFor-10*time.Second).Milliseconds())) {
				t.Fatalf("peer QP %#x after %v stopped: %+v", q.QPN, stopFor, q)
			}
		}
	}

	if err := resume(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-client.Done():
	case <-time.After(2 * time.Minute):
		for _, g := range []*lab.Guest{src, peer} {
			out, _ := g.Output(ctx, "sh", "-c", "for p in $(pgrep -x "+name+"); do migros rxe list --pid $p; done; "+
				"rdma statistic show link rxe0/1; dmesg | tail -20")
			t.Logf("%s, 2 minutes after the resume:\n%s", g.Name, out)
		}
		client.Kill()
	}
	cerr, serr := client.Wait(), server.Wait()
	if (cerr != nil || serr != nil) && perftest.CalibrationFailed(cout.String()+sout.String()) {
		return true
	}
	if cerr != nil {
		t.Fatalf("client after resume: %v\n%s", cerr, cout.String())
	}
	if serr != nil {
		t.Fatalf("server after resume: %v\n%s", serr, sout.String())
	}
	check(t, cout.String())

	afterSrc, afterPeer := counters(ctx, t, src), counters(ctx, t, peer)
	type want struct {
		g     string
		name  string
		got   int64
		least int64
	}
	wants := []want{
		{"src", "mig_resume_sent", delta(afterSrc, beforeSrc, "mig_resume_sent"), 1},
		{"peer", "mig_resume_rcvd", delta(afterPeer, beforePeer, "mig_resume_rcvd"), 1},
	}
	if peerSends {
		wants = append(wants,
			want{"src", "mig_stopped_nak_sent", delta(afterSrc, beforeSrc, "mig_stopped_nak_sent"), 1},
			want{"peer", "mig_stopped_nak_rcvd", delta(afterPeer, beforePeer, "mig_stopped_nak_rcvd"), 1},
			want{"peer", "mig_paused_ms", delta(afterPeer, beforePeer, "mig_paused_ms"), (stopFor - 10*time.Second).Milliseconds()})
	}
	for _, c := range wants {
		if c.got < c.least {
			t.Errorf("%s counter %s rose by %d, want at least %d", c.g, c.name, c.got, c.least)
		}
	}
	for _, c := range []string{"mig_resume_rejected", "mig_pause_timeout"} {
		if d := delta(afterPeer, beforePeer, c) + delta(afterSrc, beforeSrc, c); d != 0 {
			t.Errorf("counter %s rose by %d", c, d)
		}
	}
	t.Logf("peer paused %d ms; counters src %v peer %v", delta(afterPeer, beforePeer, "mig_paused_ms"),
		fmt.Sprint(afterSrc), fmt.Sprint(afterPeer))
	return false
}

// stateOf says which of the processes has ended, if any.
func stateOf(client, server *control.Process) string {
	var ended []string
	for name, p := range map[string]*control.Process{"client": client, "server": server} {
		select {
		case <-p.Done():
			ended = append(ended, name+": "+fmt.Sprint(p.Wait()))
		default:
		}
	}
	return strings.Join(ended, "; ")
}

// Resuming a whole context resumes every Stopped QP, past QPs that are
// not: of three connected RC QPs in one context (rdmacheck -H, which
// holds them without traffic), the one of the highest QPN is stopped by
// its number, and `migros rxe resume --pid` resumes it, and it alone.
func TestResumeContextPastRunningQPs(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	args := []string{"rdmacheck", "-H", "-q", "3", "-s", "65536"}
	pair, err := lab.StartPair(ctx, peer, args, src, append(args, peer.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pair.Kill)
	pid := pidOf(ctx, t, src, "rdmacheck")
	var qps []rdma.QPInfo
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		qps = listQPs(ctx, t, src, pid)
		rts := 0
		for _, q := range qps {
			if q.QPState == 3 { // IB_QPS_RTS
				rts++
			}
		}
		if rts == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d QPs in RTS after a minute, want 3\nsrc:\n%s", rts, len(qps), pair.ClientOut)
		}
	}
	last := qps[0]
	for _, q := range qps {
		if q.QPN > last.QPN {
			last = q
		}
	}
	if out, err := src.Output(ctx, "migros", "rxe", "stop", "--pid", pid, "--qpn", fmt.Sprintf("%#x", last.QPN)); err != nil {
		t.Fatalf("stop QP %#x: %v\n%s", last.QPN, err, out)
	}
	for _, q := range listQPs(ctx, t, src, pid) {
		if stopped := q.Mig == rdma.MigStopped; stopped != (q.QPN == last.QPN) {
			t.Fatalf("QP %#x is %s after stopping QP %#x alone", q.QPN, q.Mig, last.QPN)
		}
	}
	out, err := src.Output(ctx, "migros", "rxe", "resume", "--pid", pid)
	if err != nil || !strings.Contains(out, "resumed 1 QPs") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	for _, q := range listQPs(ctx, t, src, pid) {
		if q.Mig == rdma.MigStopped {
			t.Errorf("QP %#x still stopped after the context's resume", q.QPN)
		}
	}
}
