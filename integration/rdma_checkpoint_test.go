// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
	"github.com/migros/migros/integration/perftest"
)

// An unmodified RDMA process is checkpointed with stock CRIU and MigrOS'
// plugin while it streams to its peer, and keeps running (--leave-running):
// the image holds its objects and rings, its QPs resume in place, and the
// stream completes with every message checked.
func TestCheckpointLeaveRunning(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const out, images = "/tmp/ckpt-client.out", "/tmp/ckpt-images"
	args := []string{"rdmacheck", "-n", rdmacheckMsgs, "-s", "4096"}
	// CRIU wants the process in a session of its own, its output in a
	// file rather than a pipe to the control agent.
	client := []string{"setsid", "-w", "sh", "-c", fmt.Sprintf("exec %s -w 5000 %s >%s 2>&1 </dev/null",
		strings.Join(args, " "), peer.Addr(), out)}
	pair, err := lab.StartPair(ctx, peer, args, src, client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pair.Kill)
	time.Sleep(3 * time.Second)
	if st := stateOf(pair.Client, pair.Server); st != "" {
		t.Fatalf("transfer ended before the checkpoint (%s): server:\n%s", st, pair.ServerOut)
	}
	pid := pidOf(ctx, t, src, "rdmacheck")
	qpn := listQPs(ctx, t, src, pid)[0].QPN

	start := time.Now()
	if o, err := src.Output(ctx, "migros", "checkpoint", "--pid", pid, "--images", images, "--leave-running"); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, o)
	}
	t.Logf("checkpoint took %v", time.Since(start).Round(time.Millisecond))
	for _, q := range listQPs(ctx, t, src, pid) {
		if q.Mig.String() == "stopped" {
			t.Errorf("QP %#x still stopped after the checkpoint", q.QPN)
		}
	}
	insp, err := src.Output(ctx, "migros", "inspect", images)
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, insp)
	}
	t.Logf("migros inspect:\n%s", insp)
	for _, want := range []string{fmt.Sprintf("qpn %#x", qpn), "  MR ", "  CQ ", " sq ", " rq ", " cq ", "process " + pid} {
		if !strings.Contains(insp, want) {
			t.Errorf("inspect does not show %q", want)
		}
	}

	select {
	case <-pair.Client.Done():
	case <-time.After(2 * time.Minute):
		t.Fatalf("stream did not finish 2 minutes after the checkpoint; server:\n%s", pair.ServerOut)
	}
	if cerr, serr := pair.Client.Wait(), pair.Server.Wait(); cerr != nil || serr != nil {
		co, _ := src.Output(ctx, "cat", out)
		t.Fatalf("client %v, server %v\nclient:\n%s\nserver:\n%s", cerr, serr, co, pair.ServerOut)
	}
	if s := pair.ServerOut.String(); !strings.Contains(s, "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("server did not check every message:\n%s", s)
	}
}

// A process with the RDMA connection manager open is refused before
// anything is frozen, and keeps running untouched.
func TestCheckpointRefusesRDMACM(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	for try := 1; try <= 3; try++ {
		argv := []string{"ib_send_bw", "-R", "-n", "3000", "-s", "65536"}
		pair, err := startCMPair(ctx, peer, argv, src, append(argv, peer.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if st := stateOf(pair.Client, pair.Server); st != "" {
			pair.Kill()
			if perftest.CalibrationFailed(pair.ClientOut.String() + pair.ServerOut.String()) {
				continue
			}
			t.Fatalf("transfer ended before the checkpoint (%s):\n%s", st, pair.ClientOut)
		}
		pid := pidOf(ctx, t, src, "ib_send_bw")
		out, err := src.Output(ctx, "migros", "checkpoint", "--pid", pid, "--images", "/tmp/ckpt-cm")
		if err == nil || !strings.Contains(err.Error(), "RDMA connection manager open") {
			pair.Kill()
			t.Fatalf("checkpoint of an rdma_cm process: %v\n%s", err, out)
		}
		t.Log(err)
		if src.Run(ctx, "test", "-e", "/tmp/ckpt-cm") == nil {
			t.Error("the refused checkpoint created its images directory")
		}
		select {
		case <-pair.Client.Done():
		case <-time.After(2 * time.Minute):
			pair.Kill()
			t.Fatal("transfer did not finish after the refused checkpoint")
		}
		cerr, serr := pair.Client.Wait(), pair.Server.Wait()
		if (cerr != nil || serr != nil) && perftest.CalibrationFailed(pair.ClientOut.String()+pair.ServerOut.String()) {
			continue
		}
		if cerr != nil || serr != nil {
			t.Fatalf("after a refused checkpoint: client %v, server %v\n%s", cerr, serr, pair.ClientOut)
		}
		checkBW(3000, 65536)(t, pair.ClientOut.String())
		return
	}
	t.Fatal("perftest could not calibrate its clock three times")
}

// startCMPair starts a server that listens through rdma_cm, which ss does
// not show, and its client a few seconds later.
func startCMPair(ctx context.Context, server *lab.Guest, serverArgv []string, client *lab.Guest, clientArgv []string) (*lab.Pair, error) {
	p := &lab.Pair{ServerOut: &bytes.Buffer{}, ClientOut: &bytes.Buffer{}}
	var err error
	if p.Server, err = server.Start(ctx, &control.Cmd{Argv: serverArgv, Stdout: p.ServerOut, Stderr: p.ServerOut}); err != nil {
		return nil, err
	}
	time.Sleep(3 * time.Second)
	if p.Client, err = client.Start(ctx, &control.Cmd{Argv: clientArgv, Stdout: p.ClientOut, Stderr: p.ClientOut}); err != nil {
		p.Server.Kill()
		return nil, err
	}
	return p, nil
}

// A process with a UD QP attached to a multicast group is refused before
// anything is frozen (restore could not rejoin the group), and keeps
// running.
func TestCheckpointRefusesMulticast(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	// GID index 0 (IPv6 link-local): perftest's default MGID is IPv6.
	argv := []string{"ib_send_bw", "-c", "UD", "-g", "-x", "0", "-D", "20"}
	server, serverOut := serve(ctx, t, src, argv...)
	client, clientOut := start(ctx, t, peer, append(argv, src.Addr())...)
	time.Sleep(3 * time.Second)
	if src.Run(ctx, "pgrep", "-x", "ib_send_bw") != nil {
		t.Fatalf("the multicast receiver is not running:\n%s\n%s", serverOut, clientOut)
	}
	pid := pidOf(ctx, t, src, "ib_send_bw")
	out, err := src.Output(ctx, "migros", "checkpoint", "--pid", pid, "--images", "/tmp/ckpt-mcast")
	if err == nil || !strings.Contains(err.Error(), "multicast group(s), which restore cannot rejoin") {
		t.Fatalf("checkpoint of a multicast process: %v\n%s", err, out)
	}
	t.Log(err)
	if src.Run(ctx, "test", "-e", "/tmp/ckpt-mcast") == nil {
		t.Error("the refused checkpoint created its images directory")
	}
	for name, p := range map[string]*control.Process{"server": server, "client": client} {
		select {
		case <-p.Done():
			t.Errorf("the %s ended after the refused checkpoint: %v", name, p.Wait())
		default:
		}
	}
	if src.Run(ctx, "test", "-d", "/proc/"+pid) != nil {
		t.Error("the refused process is gone")
	}
}
