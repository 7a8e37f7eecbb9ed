// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/migrate"
)

// agentPKI makes the agents' CA and an identity for each guest, in a
// directory of the host the guests see.
func agentPKI(t testing.TB, gs ...*lab.Guest) string {
	t.Helper()
	dir := t.TempDir()
	var hosts []agent.Host
	for _, g := range gs {
		hosts = append(hosts, agent.Host{Name: g.Name, IPs: []net.IP{net.ParseIP(g.Addr())}})
	}
	if err := agent.Init(dir, hosts, time.Hour); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startAgent runs migros agent on g with its identity in pki; it returns
// the agent's log.
func startAgent(ctx context.Context, t testing.TB, g *lab.Guest, pki string, args ...string) *bytes.Buffer {
	t.Helper()
	_, out := runAgent(ctx, t, g, pki, args...)
	return out
}

// runAgent is startAgent, with the agent's process.
func runAgent(ctx context.Context, t testing.TB, g *lab.Guest, pki string, args ...string) (*control.Process, *bytes.Buffer) {
	t.Helper()
	p, out := start(ctx, t, g, append([]string{"migros", "agent", "--pki", filepath.Join(pki, g.Name)}, args...)...)
	if err := g.WaitListening(ctx, agent.DefaultPortNumber, p); err != nil {
		t.Fatal(err)
	}
	return p, out
}

// removeMoved removes, at the test's end, container id and its network
// namespace from every guest it may be on.
func removeMoved(t testing.TB, id string, gs ...*lab.Guest) {
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		for _, g := range gs {
			g.RemoveContainer(ctx, id)
			_ = g.Run(ctx, "ip", "netns", "del", appNS)
		}
	})
}

// migrateTo moves container id from one guest to another with migros
// migrate, with preCopy rounds of pre-copy and its final dump's memory
// streamed to a page server or (pageServer false) in the checkpoint, and
// checks its report.
func migrateTo(ctx context.Context, t testing.TB, from, to *lab.Guest, id, pki string, preCopy int, pageServer bool) migrate.Report {
	t.Helper()
	out, err := from.Output(ctx, "migros", "migrate", id, "--to", to.Addr(), "--pki", filepath.Join(pki, from.Name),
		"--pre-copy", fmt.Sprint(preCopy), fmt.Sprintf("--page-server=%v", pageServer), "--json")
	var rep migrate.Report
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err != nil {
		t.Fatalf("migrate %s -> %s: %v (%v)\n%s", from.Name, to.Name, err, jerr, out)
	}
	var names, parts []string
	took := map[string]float64{}
	for _, p := range rep.Phases {
		// A part may take no time (RDMA work in a container without).
		if p.MS < 0 || (p.MS == 0 && p.Within == "") {
			t.Errorf("%s took %v ms", p.Name, p.MS)
		}
		if p.Within == "" {
			names = append(names, p.Name)
			took[p.Name] = p.MS
			continue
		}
		parts = append(parts, p.Within+"/"+p.Name)
		if p.MS > took[p.Within] {
			t.Errorf("%s took %v ms, more than all of %s (%v ms)", p.Name, p.MS, p.Within, took[p.Within])
		}
	}
	if got, want := strings.Join(names, " "), "preflight "+strings.Repeat("pre-copy ", preCopy)+
		"freeze checkpoint transfer restore cleanup"; got != want {
		t.Errorf("phases %q, want %q", got, want)
	}
	// CRIU's run, and in it MigrOS' plugin (and in that the QPs' resume) and
	// the memory dump.
	if got := strings.Join(parts, " "); got != "checkpoint/criu dump checkpoint/rdma dump checkpoint/memory dump "+
		"restore/criu restore restore/rdma restore restore/resume" {
		t.Errorf("parts of phases %q", got)
	}
	if rep.Error != "" || rep.BlackoutMS <= 0 || rep.TotalMS < rep.BlackoutMS || rep.Bytes <= 0 || rep.ToHost != to.Name {
		t.Errorf("report %+v", rep)
	}
	// Streamed, the memory went ahead of the rest.
	if streamed := rep.StreamedBytes > 0 && rep.StreamedBytes < rep.Bytes; streamed != pageServer || rep.StreamedBytes < 0 {
		t.Errorf("%.1f MiB of %.1f MiB streamed, page server %v", float64(rep.StreamedBytes)/(1<<20),
			float64(rep.Bytes)/(1<<20), pageServer)
	}
	if st := taskStatus(ctx, t, to, id); st != "RUNNING" {
		t.Fatalf("container is %s on %s after the migration", st, to.Name)
	}
	if o, _ := from.Output(ctx, "ctr", "container", "list", "-q"); strings.Contains(o, id) {
		t.Fatalf("container still on %s after the migration:\n%s", from.Name, o)
	}
	t.Logf("%s -> %s: %+v", from.Name, to.Name, rep)
	return rep
}

// A container with ib_write_bw and rdmacheck running against the peer
// (a mover) moves src -> dst -> src with migros migrate, mid-transfer,
// its memory streamed to the destination's page server the first time,
// in the checkpoint the second: both transfers finish, every message
// intact, no error on the peer; each report has every phase, its
// blackout and the checkpoint's size, and the time of the RDMA dump,
// the RDMA restore and, in that, the QPs' resume.
func TestMigrate(t *testing.T) {
	ctx := testContext(t, 12*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const id = "e2e-migrate"
	pki := agentPKI(t, src, dst)
	removeMoved(t, id, src, dst)
	startAgent(ctx, t, src, pki)
	startAgent(ctx, t, dst, pki)
	m := startMover(ctx, t, src, peer, id)
	time.Sleep(3 * time.Second)
	reps := []migrate.Report{migrateTo(ctx, t, src, dst, id, pki, 0, true)}
	time.Sleep(2 * time.Second)
	reps = append(reps, migrateTo(ctx, t, dst, src, id, pki, 0, false))
	m.finish(ctx, t, src)
	// Its RDMA state was dumped and restored, each time.
	for _, r := range reps {
		for _, p := range r.Phases {
			if (p.Name == migrate.PartRDMADump || p.Name == migrate.PartRDMARestore || p.Name == migrate.PartResume) && p.MS <= 0 {
				t.Errorf("%s -> %s: %s took %v ms", r.From, r.ToHost, p.Name, p.MS)
			}
		}
	}
}

// A container running rdmacheck -M against the peer (every object type
// and every RC operation: send/recv, write, read, atomics, each checked,
// over two connections) moves five times, src -> dst -> src -> dst -> src
// -> dst, while it runs, each time with two rounds of pre-copy (its
// registered memory, which the peer writes, re-sent at the freeze): both
// sides check every round, nothing lost, duplicated or corrupted.
func TestMigrateMixed(t *testing.T) {
	ctx := testContext(t, 15*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const id, rounds = "e2e-migrate-mixed", "7000"
	pki := agentPKI(t, src, dst)
	removeMoved(t, id, src, dst)
	startAgent(ctx, t, src, pki)
	startAgent(ctx, t, dst, pki)
	appNetns(ctx, t, src)
	args := []string{"-M", "-c", "2", "-q", "8", "-n", rounds, "-w", "20000"}
	server, serverOut := serve(ctx, t, peer, append([]string{"rdmacheck"}, args...)...)
	bin, err := src.Output(ctx, "sh", "-c", "command -v rdmacheck")
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("%s %s %s >/mixed.out 2>&1; touch /done; exec sleep 3600",
		strings.TrimSpace(bin), strings.Join(args, " "), peer.Addr())
	startInContainer(ctx, t, src, lab.Container{ID: id, Runtime: migrosRuntime, NetNS: appNS,
		Annotations: map[string]string{"io.migros.rdma": "true"}}, "sh", "-c", script)
	time.Sleep(3 * time.Second)
	at, other := src, dst
	for i := 0; i < 5; i++ {
		select {
		case <-server.Done():
			t.Fatalf("the peer's rdmacheck ended before migration %d:\n%s", i+1, serverOut.String())
		default:
		}
		migrateTo(ctx, t, at, other, id, pki, 2, true)
		at, other = other, at
		time.Sleep(2 * time.Second)
	}
	waitOK(t, "the peer's rdmacheck", server, serverOut, 5*time.Minute)
	var moved string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if at.Run(ctx, "ctr", "task", "exec", "--exec-id", fmt.Sprint("done-", time.Now().UnixNano()), id, "test", "-e", "/done") == nil {
			moved, _ = at.Output(ctx, "ctr", "task", "exec", "--exec-id", "report", id, "cat", "/mixed.out")
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the container's rdmacheck did not finish")
		}
	}
	mixedDone(t, rounds, map[string]string{"peer": serverOut.String(), "moved": moved})
}

// lockedBuffer is a buffer written by one goroutine while another reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// failMigration runs migros migrate of id from one guest to another with
// env and args added, calls inject (if set) once the source says it is
// sending in phase at (the checkpoint's memory to the page server, or the
// rest in the transfer), and returns the report of the failure it must
// end in.
func failMigration(ctx context.Context, t *testing.T, from, to *lab.Guest, id, pki string, env []string,
	inject func(), at string, args ...string) migrate.Report {
	t.Helper()
	var stdout, stderr lockedBuffer
	argv := append([]string{"migros", "migrate", id, "--to", to.Addr(), "--pki", filepath.Join(pki, from.Name), "--json"}, args...)
	p, err := from.Start(ctx, &control.Cmd{Argv: argv, Env: env, Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if inject != nil {
		sending := regexp.MustCompile(`: ` + at + `: [0-9.]+ MiB sent`)
		for !sending.MatchString(stderr.String()) {
			select {
			case <-p.Done():
				t.Fatalf("migrate ended before sending:\n%s", stderr.String())
			case <-time.After(100 * time.Millisecond):
			}
		}
		inject()
	}
	err = p.Wait()
	var rep migrate.Report
	if jerr := json.Unmarshal([]byte(stdout.String()), &rep); jerr != nil || err == nil {
		t.Fatalf("migrate: %v (%v)\n%s\n%s", err, jerr, stdout.String(), stderr.String())
	}
	t.Logf("report: %+v", rep)
	return rep
}

// givenBack checks that a failed migration left container id running on
// src with its traffic flowing (its QPs not Stopped, their PSNs moving)
// and nothing of it on dst (waiting for dst to clean up).
func givenBack(ctx context.Context, t *testing.T, src, dst *lab.Guest, id string) {
	t.Helper()
	if st := taskStatus(ctx, t, src, id); st != "RUNNING" {
		t.Fatalf("container is %s on src after the failed migration", st)
	}
	pid := pidOf(ctx, t, src, "rdmacheck")
	before := listQPs(ctx, t, src, pid)
	for _, q := range before {
		if q.Mig.String() == "stopped" {
			t.Errorf("QP %#x still stopped after the rollback", q.QPN)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		if now := listQPs(ctx, t, src, pid); now[0].ReqPSN != before[0].ReqPSN {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QP %#x sent nothing for 30 s after the rollback", before[0].QPN)
		}
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		var left []string
		if o, _ := dst.Output(ctx, "ctr", "container", "list", "-q"); strings.Contains(o, id) {
			left = append(left, "container: "+o)
		}
		if o, _ := dst.Output(ctx, "ip", "netns", "list"); strings.Contains(o, appNS) {
			left = append(left, "network namespace: "+o)
		}
		if o, _ := dst.Output(ctx, "ctr", "images", "list", "-q"); strings.Contains(o, "migros/migrate") {
			left = append(left, "checkpoint: "+o)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dst kept %v", left)
		}
	}
}

// Faults at each phase of a migration, with a container (a mover whose
// rdmacheck sends a message every 45 ms, for 2 minutes and more) on src talking to the peer:
// the destination's disk full before and during the transfer, its agent
// killed and its link cut during the transfer, its link cut while the
// memory streams to its page server, a chunk of the stream corrupted,
// its restore failing. Each time the source keeps (or gets
// back) the container, running, its QPs resumed and sending; the report
// names the failed phase; dst keeps nothing. The mover then finishes,
// every message intact.
func TestMigrateFaults(t *testing.T) {
	ctx := testContext(t, 14*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const id = "e2e-migrate-faults"
	pki := agentPKI(t, src, dst)
	removeMoved(t, id, src, dst)
	dstAgent, _ := runAgent(ctx, t, dst, pki)
	// rdmacheck alone, checked at both ends: see startPacedMover.
	m := startPacedMover(ctx, t, src, peer, id, 45*time.Millisecond, false)
	sh := func(g *lab.Guest, script string) {
		t.Helper()
		if out, err := g.Output(ctx, "sh", "-c", script); err != nil {
			t.Fatalf("%s: %s: %v\n%s", g.Name, script, err, out)
		}
	}
	// shrink leaves dst's containerd store room for extra KiB.
	const store = "/var/lib/containerd"
	shrink := func(extra int) func() {
		return func() {
			sh(dst, fmt.Sprintf("mount -o remount,size=$(( $(df -k --output=used %s | tail -1) + %d ))k %s", store, extra, store))
		}
	}
	t.Cleanup(func() { _ = dst.Run(context.Background(), "mount", "-o", "remount,size=50%", store) })
	// A fault injected at the first second's progress lands mid-way:
	// the transfer's faults in a checkpoint that holds the memory (about
	// 0.8 MiB, 8 s; streamed, the rest is over in 2 s), the memory
	// stream's in the memory (about 0.5 MiB, 5 s).
	slow := []string{"--bandwidth", "0.1", "--page-server=false"}
	slowStream := []string{"--bandwidth", "0.1"}

	for _, tc := range []struct {
		name   string
		before func()   // before the migration
		env    []string // of migros migrate
		args   []string // more of migros migrate's
		inject func()   // once phase at (default: the transfer) sends
		at     string
		after  func() // after it failed
		phase  string
		errSub string
	}{
		{name: "disk full before", before: shrink(64), after: func() { sh(dst, "mount -o remount,size=50% "+store) },
			phase: migrate.PhasePreflight, errSub: "free in " + store},
		{name: "disk full during the transfer", args: slow, inject: shrink(64),
			after: func() { sh(dst, "mount -o remount,size=50% "+store) },
			phase: migrate.PhaseTransfer, errSub: "no space left on device"},
		{name: "destination agent killed", args: slow, inject: dstAgent.Kill,
			after: func() { dstAgent, _ = runAgent(ctx, t, dst, pki) }, phase: migrate.PhaseTransfer},
		{name: "link cut", args: slow, inject: func() { sh(dst, "ip link set eth0 down") },
			after: func() { sh(dst, "ip link set eth0 up") }, phase: migrate.PhaseTransfer},
		// The page server's stream breaks: the source's CRIU fails its
		// dump.
		{name: "link cut during the memory stream", args: slowStream, at: migrate.PhaseCheckpoint,
			inject: func() { sh(dst, "ip link set eth0 down") }, after: func() { sh(dst, "ip link set eth0 up") },
			phase: migrate.PhaseCheckpoint},
		{name: "stream corrupted", env: []string{migrate.FaultEnv + "=corrupt-stream@100000"},
			phase: migrate.PhaseTransfer, errSub: "digest"},
		// The restore cannot make the container's network: the agent's
		// uplink is lo, where no macvlan can be made.
		{name: "restore fails", before: func() {
			dstAgent.Kill()
			dstAgent, _ = runAgent(ctx, t, dst, pki, "--uplink", "lo")
		}, phase: migrate.PhaseRestore, errSub: "network namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			at := tc.at
			if at == "" {
				at = migrate.PhaseTransfer
			}
			rep := failMigration(ctx, t, src, dst, id, pki, tc.env, tc.inject, at, tc.args...)
			if tc.after != nil {
				tc.after()
			}
			frozen := tc.phase != migrate.PhasePreflight
			if rep.FailedPhase != tc.phase || rep.RolledBack != frozen || !strings.Contains(rep.Error, tc.errSub) {
				t.Errorf("failed in %q (rolled back %v): %s; want %s (rolled back %v) with %q",
					rep.FailedPhase, rep.RolledBack, rep.Error, tc.phase, frozen, tc.errSub)
			}
			givenBack(ctx, t, src, dst, id)
		})
	}
	// Killed outright while it streams the memory, past the freeze,
	// migros migrate cannot give the source back: the source's agent
	// finds its journal entry, asks the destination (which has no such
	// restore) and does.
	t.Run("migros migrate killed past the freeze", func(t *testing.T) {
		_, agentLog := runAgent(ctx, t, src, pki)
		var stderr lockedBuffer
		p, err := src.Start(ctx, &control.Cmd{Argv: []string{"migros", "migrate", id, "--to", dst.Addr(),
			"--pki", filepath.Join(pki, src.Name), "--bandwidth", "0.1"}, Stderr: &stderr})
		if err != nil {
			t.Fatal(err)
		}
		for sending := regexp.MustCompile(`: checkpoint: [0-9.]+ MiB sent`); !sending.MatchString(stderr.String()); {
			select {
			case <-p.Done():
				t.Fatalf("migrate ended before sending:\n%s", stderr.String())
			case <-time.After(100 * time.Millisecond):
			}
		}
		if out, err := src.Output(ctx, "pkill", "-KILL", "-f", "migros migrate "+id); err != nil {
			t.Fatalf("pkill: %v\n%s", err, out)
		}
		if err := p.Wait(); err == nil {
			t.Fatalf("migrate was not killed:\n%s", stderr.String())
		}
		settled := regexp.MustCompile(`.*settled a migration whose migros migrate died.*the source is given back.*`)
		for deadline := time.Now().Add(time.Minute); !settled.MatchString(agentLog.String()); time.Sleep(time.Second) {
			if time.Now().After(deadline) {
				t.Fatalf("the source's agent did not settle the migration:\n%s", agentLog.String())
			}
		}
		t.Logf("the source's agent: %s", settled.FindString(agentLog.String()))
		givenBack(ctx, t, src, dst, id)
		if out, err := src.Output(ctx, "sh", "-c", "ls /run/migros/migrate/*/ 2>/dev/null"); err == nil && strings.TrimSpace(out) != "" {
			t.Errorf("journal entries left: %s", out)
		}
	})
	m.finish(ctx, t, src)
}

// An agent serves only clients with a certificate of the agents' CA: a
// client without one, and one with another CA's, are refused; a client
// does not trust an agent of another CA.
func TestAgentRefusesStrangers(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	src, dst := guest(t, "src"), guest(t, "dst")
	pki, other := agentPKI(t, src, dst), agentPKI(t, src, dst)
	log := startAgent(ctx, t, dst, pki)
	url := "https://" + dst.Addr() + ":7430/v1/info"
	if out, err := src.Output(ctx, "migros", "agent", "ping", "--pki", filepath.Join(pki, "src"), dst.Addr()); err != nil ||
		!strings.Contains(out, "host dst") {
		t.Fatalf("ping with the CA's certificate: %v\n%s", err, out)
	}
	ours, theirs := filepath.Join(pki, "src"), filepath.Join(other, "src")
	for _, tc := range []struct {
		name string
		argv []string
		log  string // what the agent logs of the refusal
	}{
		{"no certificate", []string{"curl", "-sS", "--cacert", filepath.Join(ours, agent.CAFile), url},
			"client didn't provide a certificate"},
		{"another CA's certificate", []string{"curl", "-sS", "--cacert", filepath.Join(ours, agent.CAFile),
			"--cert", filepath.Join(theirs, agent.CertFile), "--key", filepath.Join(theirs, agent.KeyFile), url},
			"certificate signed by unknown authority"},
		// The client refuses the agent: the agent sees the client give up.
		{"another CA's agent", []string{"migros", "agent", "ping", "--pki", theirs, dst.Addr()}, "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(log.String(), "TLS handshake error")
			if out, err := src.Output(ctx, tc.argv...); err == nil || strings.Contains(out, "rxe_version") {
				t.Fatalf("%v: not refused: %v\n%s", tc.argv, err, out)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				l := log.String()
				if strings.Count(l, "TLS handshake error") > before && strings.Contains(l, tc.log) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the agent's log has no refusal with %q:\n%s", tc.log, l)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}
