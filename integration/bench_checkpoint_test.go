// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/runtime/checkpoint"
)

// holdPoint is one measurement: rdmacheck -H on src holding qps connected
// RC QPs and an MR of mb MiB, checkpointed and restored on the same host.
type holdPoint struct {
	qps, mb int

	freshQPs, freshMR  time.Duration // creating and connecting them; registering it
	ckpt, rdmaDump     time.Duration // migros checkpoint; its plugin hooks
	restore, rdmaResto time.Duration // migros restore; its plugin hooks
}

var holdLine = regexp.MustCompile(`hold: (\d+) QPs created in ([\d.]+) ms, connected in ([\d.]+) ms; (\d+) bytes registered in ([\d.]+) ms`)

func msDur(s string) time.Duration {
	v, _ := strconv.ParseFloat(s, 64)
	return time.Duration(v * float64(time.Millisecond))
}

// pluginTime is the time inside MigrOS' plugin hooks of a CRIU log: the
// RDMA work inside a dump or restore.
func pluginTime(log string) time.Duration {
	t, _ := checkpoint.LogTimes(strings.NewReader(log))
	return t.RDMA
}

func runHold(ctx context.Context, b testing.TB, src, peer *lab.Guest, p *holdPoint, n int) {
	args := []string{"rdmacheck", "-H", "-q", fmt.Sprint(p.qps), "-s", fmt.Sprint(p.mb << 20)}
	server, _ := serve(ctx, b, peer, args...)
	defer server.Kill()
	out := fmt.Sprintf("/tmp/hold-%d.out", n)
	pid := detached(ctx, b, src, out, 0, append(args, peer.Addr())...)
	defer src.Run(context.Background(), "kill", "-9", pid)
	var got string
	for deadline := time.Now().Add(5 * time.Minute); !strings.Contains(got, "holding"); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			b.Fatalf("rdmacheck -H with %d QPs and %d MiB not ready:\n%s", p.qps, p.mb, got)
		}
		got, _ = src.Output(ctx, "cat", out)
	}
	m := holdLine.FindStringSubmatch(got)
	if m == nil {
		b.Fatalf("no timings from rdmacheck -H:\n%s", got)
	}
	p.freshQPs, p.freshMR = msDur(m[2])+msDur(m[3]), msDur(m[5])

	images := fmt.Sprintf("/tmp/bench-ckpt-%d", n)
	defer src.Run(context.Background(), "rm", "-rf", images)
	start := time.Now()
	if o, err := src.Output(ctx, "migros", "checkpoint", "--pid", pid, "--images", images); err != nil {
		b.Fatalf("checkpoint: %v\n%s", err, o)
	}
	p.ckpt = time.Since(start)
	start = time.Now()
	if o, err := src.Output(ctx, "migros", "restore", "--images", images); err != nil {
		b.Fatalf("restore: %v\n%s", err, o)
	}
	p.restore = time.Since(start)
	// Each QP leaves Stopped when its peer acknowledges its RESUME; of a
	// burst of 1024 some are lost and sent again (50 ms, doubling).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		qps := listQPs(ctx, b, src, pid)
		if len(qps) != p.qps {
			b.Fatalf("restored process has %d QPs, want %d", len(qps), p.qps)
		}
		stopped := 0
		for _, q := range qps {
			if q.Mig.String() != "none" {
				stopped++
			}
		}
		if stopped == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d restored QPs still not resumed 20 s after the restore", stopped)
		}
	}
	dump, _ := src.Output(ctx, "cat", images+"/dump.log")
	rest, _ := src.Output(ctx, "cat", images+"/restore.log")
	p.rdmaDump, p.rdmaResto = pluginTime(dump), pluginTime(rest)
}

// BenchmarkCheckpointRestore (make bench): checkpoint and restore time of
// a process against its number of QPs and its registered memory, how much
// of it is RDMA work (MigrOS' plugin hooks, timed from CRIU's logs), and
// what restoring a QP or an MR costs against creating it fresh.
func BenchmarkCheckpointRestore(b *testing.B) {
	ctx := testContext(b, 45*time.Minute)
	src, peer := guest(b, "src"), guest(b, "peer")
	points := []*holdPoint{{qps: 1, mb: 1}, {qps: 16, mb: 1}, {qps: 128, mb: 1}, {qps: 1024, mb: 1},
		{qps: 1, mb: 64}, {qps: 1, mb: 256}, {qps: 1, mb: 1024}}
	// An untimed first run takes CRIU's first-run costs.
	runHold(ctx, b, src, peer, &holdPoint{qps: 1, mb: 1}, 0)
	// TCG timings of single runs vary by tens of percent, and slow
	// stretches come and go: each point is the fastest of three runs,
	// measure by measure, and the rounds go through every point in turn
	// so that a slow stretch does not fall on one point only.
	const runs = 3
	for r := 0; r < runs; r++ {
		for i, p := range points {
			run := &holdPoint{qps: p.qps, mb: p.mb}
			runHold(ctx, b, src, peer, run, runs*i+r+1)
			p.fastest(run, r == 0)
		}
	}
	for _, p := range points {
		b.Logf("%d QPs, %d MiB: checkpoint %v (RDMA %v), restore %v (RDMA %v)", p.qps, p.mb,
			p.ckpt.Round(time.Millisecond), p.rdmaDump.Round(time.Millisecond),
			p.restore.Round(time.Millisecond), p.rdmaResto.Round(time.Millisecond))
	}

	s := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
	pct := func(a, b time.Duration) string { return fmt.Sprintf("%.0f%%", 100*a.Seconds()/b.Seconds()) }
	var rep strings.Builder
	fmt.Fprintf(&rep, "# Checkpoint and restore: cost against QPs and memory (%s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&rep, "`make bench`: `rdmacheck -H` on src holds N RC QPs connected to a peer guest and an MR of M MiB; "+
		"`migros checkpoint` then `migros restore` on the same host, in a QEMU lab (TCG, 2 host cores, %d MiB per guest). "+
		"RDMA = time inside MigrOS' CRIU plugin hooks (dump: reading each uverbs file's objects and writing the image; "+
		"restore: rebuilding every object inside the task and resuming), from the timestamps of CRIU's own logs, "+
		"including the start of the `migros` helper each hook runs. Fresh = the same objects created by the program itself "+
		"(QPs: create, INIT, RTR, RTS; MR: ibv_reg_mr), timed in it. Each figure is the fastest of three runs; TCG makes "+
		"absolute times several times those of real hardware.\n\n", src.MemoryMB)
	fmt.Fprintf(&rep, "| QPs | MR | fresh QPs | fresh MR | checkpoint | RDMA dump | RDMA share | restore | RDMA restore | RDMA share |\n")
	fmt.Fprintf(&rep, "|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range points {
		fmt.Fprintf(&rep, "| %d | %d MiB | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.qps, p.mb,
			ms(p.freshQPs), ms(p.freshMR), s(p.ckpt), s(p.rdmaDump), pct(p.rdmaDump, p.ckpt),
			s(p.restore), s(p.rdmaResto), pct(p.rdmaResto, p.restore))
	}
	// Per object: the slope between the smallest and the largest point.
	q1, qn, m1, mn := points[0], points[3], points[0], points[6]
	perQP := (p2d(qn.rdmaResto) - p2d(q1.rdmaResto)) / float64(qn.qps-q1.qps)
	freshQP := (p2d(qn.freshQPs) - p2d(q1.freshQPs)) / float64(qn.qps-q1.qps)
	perMR := p2d(mn.rdmaResto) - p2d(m1.rdmaResto)
	freshMR := p2d(mn.freshMR) - p2d(m1.freshMR)
	fmt.Fprintf(&rep, "\nRestore cost per object against creating it fresh (target ≤ 2×), from the slope between "+
		"the smallest and largest point:\n\n| object | restore | fresh | restore / fresh |\n|---|---|---|---|\n")
	fmt.Fprintf(&rep, "| RC QP (connected) | %.2f ms | %.2f ms | %.2f |\n", perQP, freshQP, perQP/freshQP)
	fmt.Fprintf(&rep, "| MR, %d MiB more | %.0f ms | %.0f ms | %.2f |\n", mn.mb-m1.mb, perMR, freshMR, perMR/freshMR)
	b.ReportMetric(perQP/freshQP, "ratio/qp")
	b.ReportMetric(perMR/freshMR, "ratio/mr")
	fmt.Println(rep.String())
	if err := os.WriteFile("../_output/bench-checkpoint.md", []byte(rep.String()), 0o644); err != nil {
		b.Log(err)
	}
}

func p2d(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fastest keeps, for each measure, the smaller of p's and run's (run's
// alone if first).
func (p *holdPoint) fastest(run *holdPoint, first bool) {
	for _, m := range []struct{ to, from *time.Duration }{
		{&p.freshQPs, &run.freshQPs}, {&p.freshMR, &run.freshMR}, {&p.ckpt, &run.ckpt},
		{&p.rdmaDump, &run.rdmaDump}, {&p.restore, &run.restore}, {&p.rdmaResto, &run.rdmaResto},
	} {
		if first || *m.from < *m.to {
			*m.to = *m.from
		}
	}
}
