// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
)

// detached starts argv in g the way CRIU wants a process it checkpoints:
// a session of its own, output in a file, no pipe to the control agent.
// With pid > 0 the process gets that pid (the guest is otherwise quiet),
// so that another guest that restores it has it free.
func detached(ctx context.Context, t testing.TB, g *lab.Guest, out string, pid int, argv ...string) string {
	t.Helper()
	// The background subshell is the one fork after ns_last_pid is set;
	// setsid and the program then exec in it.
	script := fmt.Sprintf("setsid sh -c 'exec %s >%s 2>&1 </dev/null' &", strings.Join(argv, " "), out)
	if pid > 0 {
		script = fmt.Sprintf("echo %d >/proc/sys/kernel/ns_last_pid; %s", pid-1, script)
	}
	p, err := g.Start(ctx, &control.Cmd{Argv: []string{"sh", "-c", script}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	time.Sleep(2 * time.Second)
	comm := filepath.Base(argv[0])
	if len(comm) > 15 { // the kernel keeps 15 characters of a name
		comm = comm[:15]
	}
	got := pidOf(ctx, t, g, comm)
	if pid > 0 && got != fmt.Sprint(pid) {
		t.Fatalf("%s started as pid %s, want %d", argv[0], got, pid)
	}
	t.Cleanup(func() { g.Run(context.Background(), "kill", "-9", got) })
	return got
}

// waitGone waits until process pid of g has exited.
func waitGone(ctx context.Context, t *testing.T, g *lab.Guest, pid string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for g.Run(ctx, "test", "-d", "/proc/"+pid) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s: process %s still runs after %v", g.Name, pid, d)
		}
		time.Sleep(time.Second)
	}
}

func checkpointKill(ctx context.Context, t *testing.T, g *lab.Guest, pid, images string) {
	t.Helper()
	if o, err := g.Output(ctx, "migros", "checkpoint", "--pid", pid, "--images", images); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, o)
	}
	if g.Run(ctx, "test", "-d", "/proc/"+pid) == nil {
		t.Fatalf("process %s still runs after a checkpoint without --leave-running", pid)
	}
}

// restoreTree restores the images on g and checks that the tree's root
// is pid.
func restoreTree(ctx context.Context, t *testing.T, g *lab.Guest, images, pid string) {
	t.Helper()
	out, err := g.Output(ctx, "migros", "restore", "--images", images)
	if err != nil {
		t.Fatalf("restore on %s: %v\n%s", g.Name, err, out)
	}
	if !strings.Contains(out, "restored process "+pid) {
		t.Fatalf("restore on %s: %q, want process %s", g.Name, out, pid)
	}
}

// restore restores the images of process pid on g and checks that its QPs
// are resumed.
func restore(ctx context.Context, t *testing.T, g *lab.Guest, images, pid string) {
	t.Helper()
	restoreTree(ctx, t, g, images, pid)
	for _, q := range listQPs(ctx, t, g, pid) {
		if q.Mig.String() != "none" {
			t.Errorf("restored QP %#x is %s, want resumed", q.QPN, q.Mig)
		}
	}
}

// start starts argv in g with its output collected; it is killed when
// the test ends.
func start(ctx context.Context, t testing.TB, g *lab.Guest, argv ...string) (*control.Process, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	p, err := g.Start(ctx, &control.Cmd{Argv: argv, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p, &out
}

// serve starts argv in g as the server a client will connect to.
func serve(ctx context.Context, t testing.TB, g *lab.Guest, argv ...string) (*control.Process, *bytes.Buffer) {
	t.Helper()
	p, out := start(ctx, t, g, argv...)
	if err := g.WaitListening(ctx, lab.RDMAPort, p); err != nil {
		t.Fatal(err)
	}
	return p, out
}

// mixedDone checks that every rdmacheck -M output in outs (by name)
// reports all rounds of its two connections checked.
func mixedDone(t *testing.T, rounds string, outs map[string]string) {
	t.Helper()
	want := "mixed: 2 connections, " + rounds + " rounds each, all checked"
	for name, o := range outs {
		if !strings.Contains(o, want) {
			t.Errorf("%s did not check everything:\n%s", name, o)
		}
	}
}

// waitOK waits up to d for p to exit successfully.
func waitOK(t *testing.T, what string, p *control.Process, out *bytes.Buffer, d time.Duration) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v:\n%s", what, d, out)
	}
	if err := p.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
}

// pingpongDone waits for the pingpong server to finish and for the
// restored client (pid on g, output in out) to exit, and checks that both
// did all their exchanges.
func pingpongDone(ctx context.Context, t *testing.T, server *control.Process, serverOut *bytes.Buffer,
	g *lab.Guest, pid, out, iters string) {
	t.Helper()
	waitOK(t, "the peer", server, serverOut, 3*time.Minute)
	waitGone(ctx, t, g, pid, time.Minute)
	got, _ := g.Output(ctx, "cat", out)
	for name, o := range map[string]string{"peer": serverOut.String(), "restored": got} {
		if !strings.Contains(o, iters+" iters in") {
			t.Errorf("%s did not finish its %s exchanges:\n%s", name, iters, o)
		}
	}
}

// Same host: a receiver is checkpointed (and killed) while its peer
// streams to it; the peer pauses; the receiver is restored from the
// images and resumes its peer. Every message arrives once, in order and
// intact.
func TestRestoreSameHost(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const out, images = "/tmp/restore-server.out", "/tmp/restore-images"
	args := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	pid := detached(ctx, t, src, out, 0, args...)
	if err := src.WaitListening(ctx, lab.RDMAPort, nil); err != nil {
		t.Fatal(err)
	}
	client, clientOut := start(ctx, t, peer, append(args, "-w", "5000", src.Addr())...)
	time.Sleep(3 * time.Second)

	checkpointKill(ctx, t, src, pid, images)
	time.Sleep(2 * time.Second) // the peer sends into the stopped QP meanwhile
	peerPID := pidOf(ctx, t, peer, "rdmacheck")
	if qps := listQPs(ctx, t, peer, peerPID); len(qps) != 1 || qps[0].Mig.String() != "paused" {
		t.Errorf("peer QPs while src is checkpointed: %+v, want one paused", qps)
	}
	restore(ctx, t, src, images, pid)

	waitOK(t, "the peer", client, clientOut, 2*time.Minute)
	waitGone(ctx, t, src, pid, time.Minute)
	got, _ := src.Output(ctx, "cat", out)
	if !strings.Contains(got, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("restored receiver did not check every message:\n%s", got)
	}
}

// Unmodified pingpongs are checkpointed mid-run and restored on the same
// host; both sides finish every exchange, checking every buffer, and the
// restored one exits (no hang in ibv_destroy_cq/qp/srq).
//   - ibv_rc_pingpong -e sleeps on completion events: a completion
//     channel, an armed CQ, events read and not yet acknowledged;
//   - ibv_srq_pingpong: 16 RC QPs sharing one SRQ, also on events;
//   - ibv_uc_pingpong and ibv_ud_pingpong, whose transports have no
//     acknowledgement and which do not retransmit: one lost message
//     and they wait forever.
func TestRestorePingpongs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		iters int
		argv  []string
	}{
		// 12-20 s of exchanges (scaled): the dump (CRIU's kernel facts
		// cached at boot) freezes them about 3 s in.
		{"rc events", 4000, []string{"ibv_rc_pingpong", "-g", "1", "-e", "-c"}},
		{"srq", 12000, []string{"ibv_srq_pingpong", "-g", "1", "-e", "-c", "-q", "16"}},
		{"uc events", 4000, []string{"ibv_uc_pingpong", "-g", "1", "-e", "-c"}},
		{"ud events", 8000, []string{"ibv_ud_pingpong", "-g", "1", "-e", "-c", "-s", "512"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			src, peer := guest(t, "src"), guest(t, "peer")
			const out, images = "/tmp/restore-pp.out", "/tmp/restore-pp"
			iters := fmt.Sprint(scaled(t, tc.iters))
			argv := append(tc.argv, "-n", iters)
			src.Run(ctx, "rm", "-rf", images)
			server, serverOut := serve(ctx, t, peer, argv...)
			pid := detached(ctx, t, src, out, 0, append(argv, peer.Addr())...)
			time.Sleep(2 * time.Second)
			checkpointKill(ctx, t, src, pid, images)
			insp, err := src.Output(ctx, "migros", "inspect", images)
			if err != nil || !strings.Contains(insp, "event fds [4 5]") || strings.Contains(insp, "events read 0,") {
				t.Errorf("inspect shows no completion channel or no event read before the checkpoint: %v\n%s", err, insp)
			}
			restore(ctx, t, src, images, pid)
			pingpongDone(ctx, t, server, serverOut, src, pid, out, iters)
		})
	}
}

// copyBetween copies files from one guest to another through the host.
func copyBetween(ctx context.Context, t *testing.T, from, to *lab.Guest, paths ...string) {
	t.Helper()
	tmp := t.TempDir()
	for i, p := range paths {
		local := filepath.Join(tmp, fmt.Sprint(i))
		if err := from.CopyOut(ctx, p, local); err != nil {
			t.Fatal(err)
		}
		if err := to.CopyIn(ctx, local, p); err != nil {
			t.Fatal(err)
		}
	}
}

// copyImages copies a checkpoint directory from one guest to another.
func copyImages(ctx context.Context, t *testing.T, from, to *lab.Guest, dir string) {
	t.Helper()
	ls, err := from.Output(ctx, "ls", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := to.Run(ctx, "mkdir", "-p", dir); err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range strings.Fields(ls) {
		files = append(files, filepath.Join(dir, f))
	}
	copyBetween(ctx, t, from, to, files...)
}

// src -> dst: a pingpong checkpointed on src is restored on dst; its peer
// learns the new address from the RESUME (RC and UC: the peer QP's
// address; UD: the peer's driver sends what its address handles send to
// the old address and QPN to the new one) and both finish every exchange
// with buffer checking.
func TestRestoreOnAnotherHost(t *testing.T) {
	for i, tc := range []struct {
		name  string
		iters int
		argv  []string
	}{
		{"rc", 4000, []string{"ibv_rc_pingpong", "-g", "1", "-c"}},
		{"uc", 4000, []string{"ibv_uc_pingpong", "-g", "1", "-c"}},
		{"ud", 8000, []string{"ibv_ud_pingpong", "-g", "1", "-c", "-s", "512"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 6*time.Minute)
			src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
			out, images := "/tmp/move-"+tc.name+".out", "/tmp/move-"+tc.name
			iters := fmt.Sprint(scaled(t, tc.iters))
			argv := append(tc.argv, "-n", iters)
			server, serverOut := serve(ctx, t, peer, argv...)
			before := counters(ctx, t, peer)
			// A pid that dst's own processes do not have.
			pid := detached(ctx, t, src, out, 30000+100*i, append(argv, peer.Addr())...)
			time.Sleep(2 * time.Second)
			move(ctx, t, src, dst, pid, out, images)
			pingpongDone(ctx, t, server, serverOut, dst, pid, out, iters)
			got, _ := dst.Output(ctx, "cat", out)
			if !strings.Contains(got, "GID ::ffff:"+src.Addr()) {
				t.Errorf("the moved process' output does not show it started on src:\n%s", got)
			}
			// UD: the moved QP's REDIRECT (for each of src's two GIDs,
			// sent three times) reached the peer's driver.
			if n := delta(counters(ctx, t, peer), before, "mig_redirects"); tc.name == "ud" && n < 2 {
				t.Errorf("the peer applied %d REDIRECTs, want at least 2", n)
			}
		})
	}
}

// A UC or UD QP that is stopped holds the requests that reach it, and its
// image carries them to the restored QP: without them these pingpongs
// would wait forever for the lost message. To have one arrive while the
// QP is Stopped, the peer is frozen (with the outstanding ping in its
// receive queue) while src's QPs are stopped, then thawed: its reply
// reaches the Stopped QP. The process is then moved to dst.
func TestRestoreHeldRequests(t *testing.T) {
	for i, tc := range []struct {
		name  string
		iters int
		argv  []string
	}{
		{"uc", 3000, []string{"ibv_uc_pingpong", "-g", "1", "-c"}},
		{"ud", 10000, []string{"ibv_ud_pingpong", "-g", "1", "-c", "-s", "512"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
			tc.argv = append(tc.argv, "-n", fmt.Sprint(scaled(t, tc.iters)))
			out, images := "/tmp/held-"+tc.name+".out", "/tmp/held-"+tc.name
			server, serverOut := serve(ctx, t, peer, tc.argv...)
			pid := detached(ctx, t, src, out, 31000+100*i, append(tc.argv, peer.Addr())...)
			time.Sleep(2 * time.Second)
			peerPID := pidOf(ctx, t, peer, tc.argv[0])
			signal := func(sig string) {
				t.Helper()
				if o, err := peer.Output(ctx, "kill", sig, peerPID); err != nil {
					t.Fatalf("kill %s %s: %v\n%s", sig, peerPID, err, o)
				}
			}
			signal("-STOP")
			time.Sleep(300 * time.Millisecond)
			stopQPs(ctx, t, src, pid)
			signal("-CONT")
			time.Sleep(300 * time.Millisecond)
			warned := kernelWarnings(ctx, t, src)
			move(ctx, t, src, dst, pid, out, images)
			// CRIU kills the dumped process: its Stopped QP goes with
			// the requests it holds (each a reference on the QP).
			if w := kernelWarnings(ctx, t, src); len(w) > len(warned) {
				t.Errorf("src's kernel warned while the process with held requests exited:\n%s",
					strings.Join(w[len(warned):], "\n"))
			}
			insp, err := dst.Output(ctx, "migros", "inspect", images)
			held := regexp.MustCompile(`; requests held: [1-9][0-9]*`).FindString(insp)
			if err != nil || held == "" {
				t.Fatalf("the image holds no request: %v\n%s", err, insp)
			}
			t.Logf("image of the stopped process: %s", strings.TrimPrefix(held, "; "))
			pingpongDone(ctx, t, server, serverOut, dst, pid, out, tc.argv[len(tc.argv)-1])
		})
	}
}

// Bad restores fail with a clear error before CRIU creates anything, and
// the source, checkpointed with --leave-running, streams on untouched.
func TestRestoreBadCases(t *testing.T) {
	ctx := testContext(t, 6*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const out, images = "/tmp/bad-client.out", "/tmp/bad-images"
	args := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	server, serverOut := serve(ctx, t, peer, args...)
	pid := detached(ctx, t, src, out, 0, append(args, "-w", "5000", peer.Addr())...)
	time.Sleep(2 * time.Second)
	if o, err := src.Output(ctx, "migros", "checkpoint", "--pid", pid, "--images", images, "--leave-running"); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, o)
	}
	img, err := src.Output(ctx, "sh", "-c", "ls "+images+"/rdma-[0-9]*.img")
	if err != nil {
		t.Fatal(err)
	}
	img = strings.TrimSpace(img)
	name := filepath.Base(img)

	bad := func(dir, setup, want string) {
		t.Helper()
		if err := src.Run(ctx, "sh", "-c", fmt.Sprintf("rm -rf %s && cp -a %s %s && cd %s && %s", dir, images, dir, dir, setup)); err != nil {
			t.Fatal(err)
		}
		o, err := src.Output(ctx, "migros", "restore", "--images", dir)
		if err == nil || !strings.Contains(err.Error()+o, want) {
			t.Errorf("restore of %s (%s): %v\n%s\nwant an error with %q", dir, setup, err, o, want)
		}
		if src.Run(ctx, "test", "-e", dir+"/restore.log") == nil {
			t.Errorf("restore of %s (%s) got as far as CRIU", dir, setup)
		}
	}
	// One byte flipped in the middle of the RDMA image.
	bad("/tmp/bad-corrupt", fmt.Sprintf(`n=$(stat -c %%s %s); printf '\377' | dd of=%s bs=1 seek=$((n/2)) conv=notrunc 2>/dev/null`, name, name), "checksum")
	bad("/tmp/bad-truncated", fmt.Sprintf("truncate -s 100 %s", name), "checksum")
	// The source still runs on src: its QPN and MR keys are taken.
	bad("/tmp/bad-collision", "true", "already taken")

	// dst without an RDMA device.
	copyImages(ctx, t, src, dst, images)
	if o, err := dst.Output(ctx, "rdma", "link", "delete", "rxe0"); err != nil {
		t.Fatalf("rdma link delete: %v\n%s", err, o)
	}
	o, rerr := dst.Output(ctx, "migros", "restore", "--images", images)
	if o2, err := dst.Output(ctx, "rdma", "link", "add", "rxe0", "type", "rxe", "netdev", "eth0"); err != nil {
		t.Fatalf("rdma link add: %v\n%s", err, o2)
	}
	if rerr == nil || !strings.Contains(rerr.Error()+o, "/dev/infiniband/uverbs0") {
		t.Errorf("restore on a host without the device: %v\n%s", rerr, o)
	}

	waitOK(t, "the stream after the failed restores", server, serverOut, 2*time.Minute)
	if s := serverOut.String(); !strings.Contains(s, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("server did not check every message:\n%s", s)
	}
}

// move checkpoints process pid on from (killing it) and restores it on to,
// with its output file out.
func move(ctx context.Context, t *testing.T, from, to *lab.Guest, pid, out, images string) {
	t.Helper()
	checkpointKill(ctx, t, from, pid, images)
	copyImages(ctx, t, from, to, images)
	copyBetween(ctx, t, from, to, out)
	restore(ctx, t, to, images, pid)
}

// Ten consecutive moves, src -> dst -> src ..., of an ibv_rc_pingpong
// that checks every buffer, while its peer keeps exchanging with it: both
// finish every exchange.
func TestRestoreTenMoves(t *testing.T) {
	ctx := testContext(t, 12*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	// 40 s (scaled), half of it between the moves.
	const out = "/tmp/hops-pp.out"
	iters := fmt.Sprint(scaled(t, 10000))
	argv := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", iters}
	server, serverOut := serve(ctx, t, peer, argv...)
	pid := detached(ctx, t, src, out, 30000, append(argv, peer.Addr())...)
	hosts := []*lab.Guest{src, dst}
	for hop := 0; hop < 10; hop++ {
		time.Sleep(time.Second) // some exchanges between moves
		from, to := hosts[hop%2], hosts[(hop+1)%2]
		start := time.Now()
		move(ctx, t, from, to, pid, out, fmt.Sprintf("/tmp/hop-%d", hop))
		t.Logf("move %d %s -> %s: %v", hop+1, from.Name, to.Name, time.Since(start).Round(time.Millisecond))
	}
	// After ten moves the process is back on src.
	pingpongDone(ctx, t, server, serverOut, src, pid, out, iters)
}

// Unmodified perftest clients are checkpointed mid-transfer and restored
// on the same host (they keep their TCP connection, which CRIU restores):
// RDMA WRITE, READ and ATOMIC requesters, whose responder state (READ and
// ATOMIC replay resources, PSNs) must carry over, and a bidirectional
// SEND. Both sides finish without error and the client reports every
// iteration.
func TestRestorePerftest(t *testing.T) {
	for _, tc := range []struct {
		argv        []string
		iters, size int
	}{
		// 64 KiB messages span 64 packets, so the stop falls inside
		// one; the lab moved about 9 MB/s: 10-20 s of traffic each
		// (scaled).
		{[]string{"ib_write_bw"}, 2000, 65536},
		{[]string{"ib_read_bw"}, 2000, 65536},
		{[]string{"ib_atomic_bw"}, 50000, 8},
		{[]string{"ib_send_bw", "-b"}, 1500, 65536},
	} {
		t.Run(tc.argv[0], func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			src, peer := guest(t, "src"), guest(t, "peer")
			const out, images = "/tmp/restore-perf.out", "/tmp/restore-perf"
			iters := scaled(t, tc.iters)
			argv := append(tc.argv, "-x", "1", "-n", fmt.Sprint(iters), "-s", fmt.Sprint(tc.size))
			src.Run(ctx, "rm", "-rf", images)
			server, serverOut := serve(ctx, t, peer, argv...)
			pid := detached(ctx, t, src, out, 0, append(argv, peer.Addr())...)
			time.Sleep(2 * time.Second)
			checkpointKill(ctx, t, src, pid, images)
			restore(ctx, t, src, images, pid)
			waitOK(t, "the perftest server", server, serverOut, 3*time.Minute)
			waitGone(ctx, t, src, pid, time.Minute)
			got, _ := src.Output(ctx, "cat", out)
			checkBW(iters, tc.size)(t, got)
		})
	}
}

// A process tree with two RDMA processes, each with its own context and
// peer connection, is checkpointed from its root and restored as a whole;
// every exchange of both completes.
func TestRestoreProcessTree(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const images = "/tmp/tree-images"
	iters := fmt.Sprint(scaled(t, 4000))
	ports := []int{lab.RDMAPort, lab.RDMAPort + 1}
	type server struct {
		p   *control.Process
		out *bytes.Buffer
	}
	var servers []server
	var clients []string
	for _, port := range ports {
		argv := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", iters, "-p", fmt.Sprint(port)}
		var out bytes.Buffer
		p, err := peer.Start(ctx, &control.Cmd{Argv: argv, Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill)
		if err := peer.WaitListening(ctx, port, p); err != nil {
			t.Fatal(err)
		}
		servers = append(servers, server{p, &out})
		clients = append(clients, fmt.Sprintf("%s %s >/tmp/tree-%d.out 2>&1", strings.Join(argv, " "), peer.Addr(), port))
	}
	// The root, a shell, waits for its two RDMA children.
	script := fmt.Sprintf(`setsid sh -c 'exec sh -c "%s & %s & wait" >/dev/null 2>&1 </dev/null' &`, clients[0], clients[1])
	starter, err := src.Start(ctx, &control.Cmd{Argv: []string{"sh", "-c", script}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(starter.Kill)
	time.Sleep(3 * time.Second)
	pids, err := src.Output(ctx, "pgrep", "-x", "ibv_rc_pingpong")
	if err != nil || len(strings.Fields(pids)) != 2 {
		o, _ := src.Output(ctx, "sh", "-c", "cat /tmp/tree-*.out; ps -ef")
		t.Fatalf("want two ibv_rc_pingpong on src: %q %v\n%s", pids, err, o)
	}
	ppid, err := src.Output(ctx, "ps", "-o", "ppid=", "-p", strings.Fields(pids)[0])
	if err != nil {
		t.Fatal(err)
	}
	root := strings.TrimSpace(ppid)
	t.Cleanup(func() { src.Run(context.Background(), "pkill", "-x", "ibv_rc_pingpong") })

	checkpointKill(ctx, t, src, root, images)
	insp, err := src.Output(ctx, "migros", "inspect", images)
	if err != nil || strings.Count(insp, "file ") != 2 {
		t.Fatalf("inspect: want two uverbs files, one per process: %v\n%s", err, insp)
	}
	restoreTree(ctx, t, src, images, root)
	for _, p := range strings.Fields(pids) {
		for _, q := range listQPs(ctx, t, src, p) {
			if q.Mig.String() != "none" {
				t.Errorf("process %s: restored QP %#x is %s", p, q.QPN, q.Mig)
			}
		}
	}
	for i, s := range servers {
		waitOK(t, fmt.Sprint("peer server on port ", ports[i]), s.p, s.out, 3*time.Minute)
	}
	waitGone(ctx, t, src, root, time.Minute)
	for i, port := range ports {
		got, _ := src.Output(ctx, "cat", fmt.Sprintf("/tmp/tree-%d.out", port))
		for name, o := range map[string]string{"peer": servers[i].out.String(), "restored": got} {
			if !strings.Contains(o, iters+" iters in") {
				t.Errorf("port %d: %s did not finish its %s exchanges:\n%s", port, name, iters, o)
			}
		}
	}
}

// rdmacheck -M moves src -> dst -> src under traffic: two threads, each
// with a device context of its own and every object type (PD, two MRs,
// an MW, an AH, a CQ on a completion channel and one without, an SRQ, two
// RC QPs, one posted to with ibv_post_send, one with the ibv_wr_* API),
// each round a SEND, a WRITE with immediate, a READ and both atomics.
// Both sides check every message, READ and atomic result, and end by
// destroying every object.
func TestRestoreMixed(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const out, rounds = "/tmp/mixed.out", "2000"
	args := []string{"rdmacheck", "-M", "-c", "2", "-q", "8", "-n", rounds, "-w", "20000"}
	pid := detached(ctx, t, src, out, 30000, args...)
	client, clientOut := start(ctx, t, peer, append(args, src.Addr())...)
	time.Sleep(3 * time.Second)

	move(ctx, t, src, dst, pid, out, "/tmp/mixed-1")
	if tasks, err := dst.Output(ctx, "ls", "/proc/"+pid+"/task"); err != nil || len(strings.Fields(tasks)) != 3 {
		t.Errorf("restored process' threads: %q, %v; want 3", tasks, err)
	}
	time.Sleep(2 * time.Second)
	move(ctx, t, dst, src, pid, out, "/tmp/mixed-2")

	waitOK(t, "the peer", client, clientOut, 3*time.Minute)
	waitGone(ctx, t, src, pid, time.Minute)
	got, _ := src.Output(ctx, "cat", out)
	mixedDone(t, rounds, map[string]string{"peer": clientOut.String(), "moved": got})
}

// A process with contexts on two RDMA devices: rxe0 on eth0 and a second
// rxe on a macvlan of eth0 with an address of its own, so that each
// device has its own GID on the lab network. rdmacheck -M runs one
// connection on each, to the peer, and is checkpointed and restored on
// src; both connections check every round.
func TestRestoreTwoDevices(t *testing.T) {
	ctx := testContext(t, 6*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const dev, addr = "rxe_mv0", "192.168.77.21"
	setup := "sysctl -qw net.ipv4.conf.all.arp_ignore=1 && " +
		"ip link add mv0 link eth0 type macvlan mode bridge && " +
		"ip addr add " + addr + "/24 dev mv0 && ip link set mv0 up && " +
		"rdma link add " + dev + " type rxe netdev mv0"
	if o, err := src.Output(ctx, "sh", "-c", setup); err != nil {
		t.Fatalf("second device: %v\n%s", err, o)
	}
	t.Cleanup(func() {
		src.Run(context.Background(), "sh", "-c", "rdma link delete "+dev+"; ip link delete mv0; sysctl -qw net.ipv4.conf.all.arp_ignore=0")
	})
	const out, images, rounds = "/tmp/twodev.out", "/tmp/twodev-images", "1500"
	args := []string{"rdmacheck", "-M", "-c", "2", "-q", "8", "-n", rounds, "-w", "20000"}
	pid := detached(ctx, t, src, out, 0, append(args, "-d", "rxe0,"+dev)...)
	client, clientOut := start(ctx, t, peer, append(args, src.Addr())...)
	time.Sleep(3 * time.Second)

	checkpointKill(ctx, t, src, pid, images)
	insp, err := src.Output(ctx, "migros", "inspect", images)
	if err != nil || !strings.Contains(insp, "uverbs0") || !strings.Contains(insp, "uverbs1") {
		t.Fatalf("inspect: want one context on each device: %v\n%s", err, insp)
	}
	// Each connection's type 2 MW is dumped bound, through its QP A.
	if n := strings.Count(insp, "through QP"); n != 2 {
		t.Errorf("inspect shows %d bound type 2 MWs, want 2:\n%s", n, insp)
	}
	restore(ctx, t, src, images, pid)
	// Connection 1's two QPs are back on the second device.
	res, err := src.Output(ctx, "rdma", "resource", "show", "qp", "link", dev+"/1")
	if err != nil || strings.Count(res, "pid "+pid+" ") != 2 {
		t.Errorf("QPs of process %s on %s after restore: %v\n%s", pid, dev, err, res)
	}

	waitOK(t, "the peer", client, clientOut, 3*time.Minute)
	waitGone(ctx, t, src, pid, time.Minute)
	got, _ := src.Output(ctx, "cat", out)
	mixedDone(t, rounds, map[string]string{"peer": clientOut.String(), "restored": got})
}

// TestRestoreInHandleOrder: rdmacheck -H creates its PD, CQ, QPs and MR
// in the order restore creates objects by type, so their handles increase
// in that order and restore takes its handle-order path (a filler only
// for a handle no object owns). The other tests' programs register MRs
// before creating QPs and take the filler-per-object path. Restore checks
// each object's handle, QPN and keys; every QP must then resume.
func TestRestoreInHandleOrder(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	p := &holdPoint{qps: 8, mb: 1}
	runHold(ctx, t, src, peer, p, 100)
	if p.restore == 0 || p.rdmaResto == 0 {
		t.Fatalf("restore of %d QPs not timed: %+v", p.qps, p)
	}
}
