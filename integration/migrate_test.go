// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/migrate"
)

// agentPKI makes the agents' CA and an identity for each guest, in a
// directory of the host the guests see.
func agentPKI(t *testing.T, gs ...*lab.Guest) string {
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
func startAgent(ctx context.Context, t *testing.T, g *lab.Guest, pki string, args ...string) *bytes.Buffer {
	t.Helper()
	p, out := start(ctx, t, g, append([]string{"migros", "agent", "--pki", filepath.Join(pki, g.Name)}, args...)...)
	if err := g.WaitListening(ctx, agent.DefaultPortNumber, p); err != nil {
		t.Fatal(err)
	}
	return out
}

// removeMoved removes, at the test's end, container id and its network
// namespace from every guest it may be on.
func removeMoved(t *testing.T, id string, gs ...*lab.Guest) {
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		for _, g := range gs {
			g.RemoveContainer(ctx, id)
			_ = g.Run(ctx, "ip", "netns", "del", appNS)
		}
	})
}

// migrateTo moves container id from one guest to another with migros
// migrate, and checks its report.
func migrateTo(ctx context.Context, t *testing.T, from, to *lab.Guest, id, pki string) migrate.Report {
	t.Helper()
	out, err := from.Output(ctx, "migros", "migrate", id, "--to", to.Addr(), "--pki", filepath.Join(pki, from.Name), "--json")
	var rep migrate.Report
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err != nil {
		t.Fatalf("migrate %s -> %s: %v (%v)\n%s", from.Name, to.Name, err, jerr, out)
	}
	var names []string
	for _, p := range rep.Phases {
		names = append(names, p.Name)
		if p.MS <= 0 {
			t.Errorf("phase %s took %v ms", p.Name, p.MS)
		}
	}
	if got := strings.Join(names, " "); got != "preflight freeze checkpoint transfer restore cleanup" {
		t.Errorf("phases %q", got)
	}
	if rep.Error != "" || rep.BlackoutMS <= 0 || rep.TotalMS < rep.BlackoutMS || rep.Bytes <= 0 || rep.ToHost != to.Name {
		t.Errorf("report %+v", rep)
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
// (a mover) moves src -> dst -> src with migros migrate, mid-transfer:
// both transfers finish, every message intact, no error on the peer; each
// report has every phase, its blackout and the checkpoint's size.
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
	migrateTo(ctx, t, src, dst, id, pki)
	time.Sleep(2 * time.Second)
	migrateTo(ctx, t, dst, src, id, pki)
	m.finish(ctx, t, src)
}

// A migration that fails on the destination after the source was frozen
// (its restore cannot make the container's network: the agent's uplink
// is lo, where no macvlan can be made) gives the source back: the report
// names the failed phase, the container runs on src with its QPs no
// longer Stopped, dst keeps nothing of it, and both transfers finish
// with every message intact.
func TestMigrateRollback(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	src, dst, peer := guest(t, "src"), guest(t, "dst"), guest(t, "peer")
	const id = "e2e-migrate-back"
	pki := agentPKI(t, src, dst)
	removeMoved(t, id, src, dst)
	startAgent(ctx, t, dst, pki, "--uplink", "lo")
	m := startMover(ctx, t, src, peer, id)
	time.Sleep(3 * time.Second)
	out, err := src.Output(ctx, "migros", "migrate", id, "--to", dst.Addr(), "--pki", filepath.Join(pki, "src"), "--json")
	var rep migrate.Report
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err == nil {
		t.Fatalf("migrate: %v (%v)\n%s", err, jerr, out)
	}
	if rep.FailedPhase != migrate.PhaseRestore || !rep.RolledBack || !strings.Contains(rep.Error, "network namespace") {
		t.Fatalf("report %+v, want a failed restore, rolled back", rep)
	}
	t.Logf("report: %+v", rep)
	if st := taskStatus(ctx, t, src, id); st != "RUNNING" {
		t.Fatalf("container is %s on src after the failed migration", st)
	}
	for _, q := range listQPs(ctx, t, src, pidOf(ctx, t, src, "rdmacheck")) {
		if q.Mig.String() == "stopped" {
			t.Errorf("QP %#x still stopped after the rollback", q.QPN)
		}
	}
	if o, _ := dst.Output(ctx, "ctr", "container", "list", "-q"); strings.Contains(o, id) {
		t.Errorf("dst kept the container:\n%s", o)
	}
	if o, _ := dst.Output(ctx, "ip", "netns", "list"); strings.Contains(o, appNS) {
		t.Errorf("dst kept the network namespace:\n%s", o)
	}
	if o, _ := dst.Output(ctx, "ctr", "images", "list", "-q"); strings.Contains(o, "migros/migrate") {
		t.Errorf("dst kept the checkpoint:\n%s", o)
	}
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
