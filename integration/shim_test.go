// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
)

// An RDMA container run with ctr under MigrOS' runtime streams to its peer
// while it is checkpointed with ctr twice: first leaving it running (its
// QPs resume in place and the stream goes on), then with --exit (its QPs
// stay Stopped and the peer, its receiver, waits). Its task is restored from the
// second checkpoint, and the peer receives every message once, in order
// and intact.
func TestShimCheckpointRestore(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const id = "e2e-shim-rdma"
	const ref = "localhost/migros/checkpoint/e2e-shim-rdma:1"
	var ckpt string
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		src.RemoveContainer(ctx, id)
		_ = src.Run(ctx, "ctr", "images", "rm", ref)
		if ckpt != "" {
			_ = src.Run(ctx, "ctr", "images", "rm", ckpt)
		}
	})
	args := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	server, serverOut := serve(ctx, t, peer, args...)
	startInContainer(ctx, t, src, lab.Container{ID: id, RDMA: true, Runtime: migrosRuntime},
		append(args, "-w", "5000", peer.Addr())...)
	time.Sleep(3 * time.Second)
	pid := pidOf(ctx, t, src, "rdmacheck")

	// Leaving it running: its QPs are not left Stopped.
	if o, err := src.Output(ctx, "ctr", "container", "checkpoint", "--task", id, ref); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, o)
	}
	for _, q := range listQPs(ctx, t, src, pid) {
		if q.Mig.String() == "stopped" {
			t.Errorf("QP %#x still stopped after a checkpoint that left the container running", q.QPN)
		}
	}
	if st := taskStatus(ctx, t, src, id); st != "RUNNING" {
		t.Fatalf("container is %s after a checkpoint that left it running", st)
	}
	time.Sleep(2 * time.Second)
	select {
	case <-server.Done():
		t.Fatalf("the stream ended before the second checkpoint; peer:\n%s", serverOut)
	default:
	}

	// Exiting: the task stops with its QPs Stopped; the peer pauses.
	out, err := src.Output(ctx, "ctr", "task", "checkpoint", "--exit", id)
	if err != nil {
		t.Fatalf("checkpoint --exit: %v\n%s", err, out)
	}
	ckpt = strings.TrimSpace(out)
	waitGone(ctx, t, src, pid, time.Minute)
	if err := src.Run(ctx, "ctr", "task", "delete", id); err != nil {
		t.Fatalf("deleting the exited task: %v", err)
	}
	// The peer, a receiver, waits: its QP stays connected.
	time.Sleep(2 * time.Second)
	if qps := listQPs(ctx, t, peer, pidOf(ctx, t, peer, "rdmacheck")); len(qps) != 1 || qps[0].QPState != 3 {
		t.Errorf("peer QPs while the container is checkpointed: %+v, want one in RTS", qps)
	}

	// ctr restores only container checkpoints (ctr container restore);
	// a task checkpoint is restored through containerd's API, creating
	// the container's task with it and starting it.
	if o, err := src.Output(ctx, "migros-lab", "restore-task", id, ckpt); err != nil {
		t.Fatalf("restore: %v\n%s", err, o)
	}
	if st := taskStatus(ctx, t, src, id); st != "RUNNING" {
		t.Fatalf("restored container is %s", st)
	}
	waitOK(t, "the peer", server, serverOut, 3*time.Minute)
	if s := serverOut.String(); !strings.Contains(s, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("peer did not receive every message intact:\n%s", s)
	}
}

// startInContainer starts argv, whose program the test image holds at its
// path in the guests, in container c on g, detached.
func startInContainer(ctx context.Context, t *testing.T, g *lab.Guest, c lab.Container, argv ...string) {
	t.Helper()
	bin, err := g.Output(ctx, "sh", "-c", "command -v "+argv[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Detach = true
	run, err := g.RunArgv(ctx, c, append([]string{strings.TrimSpace(bin)}, argv[1:]...)...)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := g.Output(ctx, run...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// The network namespace of a container that moves between guests, with
// its own address and MAC (lab.Guest.MacvlanNetns).
const appNS, appAddr, appMAC = "migros-app", "192.168.77.50/24", "02:00:c0:a8:4d:32"

// appNetns makes appNS on g; it is removed at the test's end.
func appNetns(ctx context.Context, t *testing.T, g *lab.Guest) {
	t.Helper()
	if err := g.MacvlanNetns(ctx, appNS, appAddr, appMAC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Run(context.Background(), "ip", "netns", "del", appNS) })
}

// mover is a container that moves between guests while it talks to the
// peer: ib_write_bw and rdmacheck (which checks every message), in
// appNS, under MigrOS' runtime. Each writes its report in the container,
// which then stays up to be asked for it.
type mover struct {
	id                  string
	perf, check         *control.Process
	perfOut, checkOut   *bytes.Buffer
	perfIters, perfSize int
}

// startMover starts the peer's servers and container id on g, in a new
// appNS; its rdmacheck sends a message every 5 ms.
func startMover(ctx context.Context, t *testing.T, g, peer *lab.Guest, id string) *mover {
	t.Helper()
	return startPacedMover(ctx, t, g, peer, id, 5*time.Millisecond, true)
}

// startPacedMover is startMover with rdmacheck sending a message every
// pace, and ib_write_bw only with perf: perftest's closing exchange over
// TCP, like its opening one, fails if a freeze splits a message, which
// many freezes in a row (rolled-back migrations) may well do.
func startPacedMover(ctx context.Context, t *testing.T, g, peer *lab.Guest, id string, pace time.Duration, perf bool) *mover {
	t.Helper()
	// ib_write_bw for 10-20 s (scaled to the lab's speed), so that the
	// moves land in its transfer.
	m := &mover{id: id, perfIters: scaled(t, 2000), perfSize: 65536}
	appNetns(ctx, t, g)
	const perfPort = 18600
	perfArgv := []string{"ib_write_bw", "-x", "1", "-n", fmt.Sprint(m.perfIters), "-s", fmt.Sprint(m.perfSize), "-p", fmt.Sprint(perfPort)}
	progs, perfRun := []string{"rdmacheck"}, "true"
	if perf {
		m.perf, m.perfOut = start(ctx, t, peer, perfArgv...)
		if err := peer.WaitListening(ctx, perfPort, m.perf); err != nil {
			t.Fatal(err)
		}
		progs, perfRun = []string{"ib_write_bw", "rdmacheck"}, strings.Join(perfArgv, " ")+" "+peer.Addr()
	}
	check := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	m.check, m.checkOut = serve(ctx, t, peer, check...)
	bin, err := g.Output(ctx, "sh", "-c", "command -v rdmacheck")
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("%s >/perf.out 2>&1 & %s %s -w %d %s >/check.out 2>&1 & wait; touch /done; exec sleep 3600",
		perfRun, strings.TrimSpace(bin), strings.Join(check[1:], " "), pace.Microseconds(), peer.Addr())
	c := lab.Container{ID: id, Runtime: migrosRuntime, NetNS: appNS, Detach: true,
		Annotations: map[string]string{"io.migros.rdma": "true"}}
	run, err := g.RunArgv(ctx, c, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := g.Output(ctx, run...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// perftest expects each message of its TCP exchange whole in one
	// read; a freeze in the middle of its start-up exchange may split
	// one (the restored socket's queue, then the rest), and it fails.
	for _, prog := range progs {
		waitConnected(ctx, t, g, prog)
	}
	return m
}

// waitConnected waits until program prog on g has an RC QP in RTS: it
// has exchanged its QP's details with its peer.
func waitConnected(ctx context.Context, t testing.TB, g *lab.Guest, prog string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if pids, err := g.Output(ctx, "pgrep", "-x", prog); err == nil {
			for _, pid := range strings.Fields(pids) {
				out, err := g.Output(ctx, "migros", "rxe", "list", "--json", "--pid", pid)
				var l qpList
				if err != nil || json.Unmarshal([]byte(out), &l) != nil {
					continue
				}
				for _, c := range l {
					for _, q := range c.QPs {
						if q.QPState == 3 { // IB_QPS_RTS
							return
						}
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s has no QP in RTS after 2 minutes", g.Name, prog)
		}
	}
}

// finish waits for both transfers to end, the container being on g: the
// peer received every message intact, its ib_write_bw (if any) exited
// without error, and the container's programs report every iteration.
func (m *mover) finish(ctx context.Context, t *testing.T, g *lab.Guest) {
	t.Helper()
	if m.perf != nil {
		waitOK(t, "the peer's ib_write_bw", m.perf, m.perfOut, 3*time.Minute)
	}
	waitOK(t, "the peer's rdmacheck", m.check, m.checkOut, 3*time.Minute)
	if s := m.checkOut.String(); !strings.Contains(s, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("peer did not receive every message intact:\n%s", s)
	}
	deadline := time.Now().Add(time.Minute)
	for g.Run(ctx, "ctr", "task", "exec", "--exec-id", fmt.Sprint("done-", time.Now().UnixNano()), m.id, "test", "-e", "/done") != nil {
		if time.Now().After(deadline) {
			t.Fatal("the container's programs did not finish")
		}
		time.Sleep(time.Second)
	}
	out, err := g.Output(ctx, "ctr", "task", "exec", "--exec-id", "report", m.id, "cat", "/perf.out", "/check.out")
	if err != nil {
		t.Fatalf("reports: %v\n%s", err, out)
	}
	if m.perf != nil {
		checkBW(m.perfIters, m.perfSize)(t, out)
	}
	if !strings.Contains(out, "sent "+rdmacheckMsgs+" messages of 4096 bytes, server checked "+rdmacheckMsgs) {
		t.Fatalf("the container's rdmacheck:\n%s", out)
	}
}

// An RDMA container under MigrOS' runtime (a mover) moves from src to
// dst with ctr's commands: checkpointed whole and stopped on src,
// exported with ctr images export, imported on dst with ctr images
// import, restored there with ctr container restore, mid-transfer. Both
// of its transfers finish on dst, with every message intact and no error
// on the peer.
func TestShimMoveByExport(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const id, ref, tar = "e2e-shim-move", "localhost/migros/checkpoint/e2e-shim-move:1", "/tmp/e2e-shim-move.tar"
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		for _, g := range []*lab.Guest{src, dst} {
			g.RemoveContainer(ctx, id)
			_ = g.Run(ctx, "ctr", "images", "rm", ref)
			_ = g.Run(ctx, "rm", "-f", tar)
		}
	})
	m := startMover(ctx, t, src, peer, id)
	time.Sleep(4 * time.Second)

	// src: checkpoint and stop; the container's address leaves with it.
	if out, err := src.Output(ctx, "migros-lab", "checkpoint", "--exit", id, ref); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	if st := taskStatus(ctx, t, src, id); st != "STOPPED" {
		t.Fatalf("checkpointed container is %s on src, want STOPPED", st)
	}
	src.RemoveContainer(ctx, id)
	if err := src.Run(ctx, "ip", "netns", "del", appNS); err != nil {
		t.Fatal(err)
	}
	if out, err := src.Output(ctx, "ctr", "images", "export", "--local", "--skip-manifest-json", tar, ref); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	copyBetween(ctx, t, src, dst, tar)

	// dst: import, the container's address, restore.
	if out, err := dst.Output(ctx, "ctr", "images", "import", "--local", "--no-unpack", tar); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	appNetns(ctx, t, dst)
	if out, err := dst.Output(ctx, "ctr", "container", "restore", "--live", "--rw", id, ref); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if st := taskStatus(ctx, t, dst, id); st != "RUNNING" {
		t.Fatalf("restored container is %s on dst", st)
	}
	m.finish(ctx, t, dst)
}

// What MigrOS cannot checkpoint or restore, through ctr, fails with an
// error that says why and leaves the running container alone: its RDMA
// stream to the peer goes on and ends with every message intact.
//   - A checkpoint of a container with the RDMA connection manager open
//     is refused before anything is frozen.
//   - A restore of a checkpoint whose QPNs and keys the running original
//     still holds (an ID collision) is refused before anything is created.
//   - A restore of a checkpoint whose RDMA image was corrupted in
//     containerd's content store is refused as corrupt.
func TestShimRefusals(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const cm, orig, copyID = "e2e-refuse-cm", "e2e-refuse", "e2e-refuse-copy"
	const ref = "localhost/migros/checkpoint/e2e-refuse:1"
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		for _, id := range []string{cm, orig, copyID} {
			src.RemoveContainer(ctx, id)
		}
		_ = src.Run(ctx, "ctr", "images", "rm", ref)
	})
	rdma := map[string]string{"io.migros.rdma": "true"}
	check := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	bin, err := src.Output(ctx, "sh", "-c", "command -v rdmacheck")
	if err != nil {
		t.Fatal(err)
	}
	// 10 ms between messages: the stream outlasts the refusals.
	client := fmt.Sprintf("%s %s -w 10000 %s", strings.TrimSpace(bin), strings.Join(check[1:], " "), peer.Addr())
	// stream runs rdmacheck in container id against a new server on the
	// peer, with the shell's fd 3 on path if not empty.
	stream := func(id, path string) (*control.Process, *bytes.Buffer) {
		server, out := serve(ctx, t, peer, check...)
		script := "exec " + client
		if path != "" {
			script = "exec 3<>" + path + "; " + script
		}
		run, err := src.RunArgv(ctx, lab.Container{ID: id, Runtime: migrosRuntime, NetHost: true, Detach: true, Annotations: rdma},
			"sh", "-c", script)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := src.Output(ctx, run...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		time.Sleep(3 * time.Second)
		return server, out
	}
	intact := func(server *control.Process, out *bytes.Buffer) {
		t.Helper()
		waitOK(t, "the peer", server, out, 3*time.Minute)
		if !strings.Contains(out.String(), "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
			t.Fatalf("peer did not receive every message intact:\n%s", out)
		}
	}
	// refused runs a ctr command that must fail with an error holding want,
	// while container id keeps running.
	refused := func(id, want string, argv ...string) {
		t.Helper()
		out, err := src.Output(ctx, argv...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%v: %v, want an error with %q\n%s", argv, err, want, out)
		}
		if st := taskStatus(ctx, t, src, id); st != "RUNNING" {
			t.Fatalf("container %s is %s after the refusal", id, st)
		}
	}

	// The connection manager open: the checkpoint is refused.
	server, out := stream(cm, "/dev/infiniband/rdma_cm")
	refused(cm, "RDMA connection manager", "ctr", "container", "checkpoint", "--task", cm, ref)
	intact(server, out)

	// A checkpoint of the original, which keeps running.
	server, out = stream(orig, "")
	if o, err := src.Output(ctx, "ctr", "container", "checkpoint", "--task", orig, ref); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, o)
	}
	// Restored beside it: its IDs are taken.
	refused(orig, "already taken", "ctr", "container", "restore", "--live", copyID, ref)
	if o, _ := src.Output(ctx, "ctr", "task", "list", "-q"); strings.Contains(o, copyID) {
		t.Fatalf("the refused restore left a task:\n%s", o)
	}
	src.RemoveContainer(ctx, copyID)
	// Its RDMA image corrupted in the content store (in the blob of
	// CRIU's images, which holds it): refused as corrupt, before its IDs
	// are even looked at.
	blob := checkpointBlob(ctx, t, src, ref)
	corrupt := `off=$(grep -boa MGRSRDMA ` + blob + ` | head -1 | cut -d: -f1) && [ -n "$off" ] &&
		printf XXXXXXXX | dd of=` + blob + ` bs=1 seek=$((off + 64)) conv=notrunc status=none`
	if o, err := src.Output(ctx, "sh", "-c", corrupt); err != nil {
		t.Fatalf("corrupting the RDMA image: %v\n%s", err, o)
	}
	refused(orig, "corrupt RDMA image", "ctr", "container", "restore", "--live", copyID, ref)
	intact(server, out)
}

// checkpointBlob is the path, in g's content store, of the blob with
// CRIU's images (and MigrOS' RDMA images) of checkpoint ref.
func checkpointBlob(ctx context.Context, t *testing.T, g *lab.Guest, ref string) string {
	t.Helper()
	out, err := g.Output(ctx, "ctr", "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	var index string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == ref {
			index = f[2]
		}
	}
	if index == "" {
		t.Fatalf("checkpoint %s not listed:\n%s", ref, out)
	}
	out, err = g.Output(ctx, "ctr", "content", "get", index)
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal([]byte(out), &idx); err != nil {
		t.Fatalf("index of %s: %v\n%s", ref, err, out)
	}
	for _, m := range idx.Manifests {
		if m.MediaType == "application/vnd.containerd.container.criu.checkpoint.criu.tar" {
			return "/var/lib/containerd/io.containerd.content.v1.content/blobs/" + m.Digest.Algorithm().String() + "/" + m.Digest.Encoded()
		}
	}
	t.Fatalf("checkpoint %s has no CRIU images:\n%s", ref, out)
	return ""
}

// A paused RDMA container checkpointed through containerd stays paused
// with its QPs Stopped (the state a migration's source waits in: its
// peers wait too); ctr task resume thaws it and resumes its QPs, and its
// stream to the peer ends with every message intact.
func TestShimCheckpointPaused(t *testing.T) {
	ctx := testContext(t, 6*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const id, ref = "e2e-shim-paused", "localhost/migros/checkpoint/e2e-shim-paused:1"
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		src.RemoveContainer(ctx, id)
		_ = src.Run(ctx, "ctr", "images", "rm", ref)
	})
	args := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	server, serverOut := serve(ctx, t, peer, args...)
	startInContainer(ctx, t, src, lab.Container{ID: id, Runtime: migrosRuntime, NetHost: true,
		Annotations: map[string]string{"io.migros.rdma": "true"}}, append(args, "-w", "5000", peer.Addr())...)
	time.Sleep(3 * time.Second)
	pid := pidOf(ctx, t, src, "rdmacheck")
	if err := src.Run(ctx, "ctr", "task", "pause", id); err != nil {
		t.Fatal(err)
	}
	// (ctr container checkpoint would pause and resume it itself.)
	if o, err := src.Output(ctx, "migros-lab", "checkpoint", id, ref); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, o)
	}
	if st := taskStatus(ctx, t, src, id); st != "PAUSED" {
		t.Fatalf("container is %s after its checkpoint, want PAUSED", st)
	}
	qps := listQPs(ctx, t, src, pid)
	for _, q := range qps {
		if q.Mig.String() != "stopped" {
			t.Errorf("QP %#x is %s while the checkpointed container is paused, want stopped", q.QPN, q.Mig)
		}
	}
	if len(qps) == 0 {
		t.Fatal("no QP listed")
	}
	if err := src.Run(ctx, "ctr", "task", "resume", id); err != nil {
		t.Fatal(err)
	}
	for _, q := range listQPs(ctx, t, src, pid) {
		if q.Mig.String() == "stopped" {
			t.Errorf("QP %#x still stopped after ctr task resume", q.QPN)
		}
	}
	waitOK(t, "the peer", server, serverOut, 3*time.Minute)
	if s := serverOut.String(); !strings.Contains(s, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("peer did not receive every message intact:\n%s", s)
	}
}
