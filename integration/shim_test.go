// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
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

