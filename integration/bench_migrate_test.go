// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/benchplot"
	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/runtime/migrate"
)

// migPoint is a container the migration benchmark moves: rdmacheck -H
// holding qps RC QPs connected to the peer and an MR of mb MiB or,
// without RDMA, the same memory touched and no RDMA object.
type migPoint struct {
	qps, mb int
	rdma    bool
	port    int // of its peer's rdmacheck
	id      string
	at, to  *lab.Guest
	reports []migrate.Report
}

func (p *migPoint) String() string {
	if !p.rdma {
		return fmt.Sprintf("no RDMA, %d MiB", p.mb)
	}
	return fmt.Sprintf("%d QPs, %d MiB MR", p.qps, p.mb)
}

// start runs p's container on src (and its peer's side on peer), with
// the memory touched and, with RDMA, the QPs connected.
func (p *migPoint) start(ctx context.Context, b *testing.B, src, dst, peer *lab.Guest) {
	b.Helper()
	p.id, p.at, p.to = fmt.Sprintf("bench-mig-%d-%d-%v", p.qps, p.mb, p.rdma), src, dst
	args := []string{"-H", "-q", fmt.Sprint(max(p.qps, 1)), "-s", fmt.Sprint(p.mb << 20), "-p", fmt.Sprint(p.port)}
	if p.rdma {
		server, _ := start(ctx, b, peer, append([]string{"rdmacheck"}, args...)...)
		if err := peer.WaitListening(ctx, p.port, server); err != nil {
			b.Fatal(err)
		}
		args = append(args, peer.Addr())
	} else {
		args = append(args, "-N")
	}
	removeMoved(b, p.id, src, dst)
	bin, err := src.Output(ctx, "sh", "-c", "command -v rdmacheck")
	if err != nil {
		b.Fatal(err)
	}
	script := fmt.Sprintf("%s %s >/hold.out 2>&1", strings.TrimSpace(bin), strings.Join(args, " "))
	c := lab.Container{ID: p.id, Runtime: migrosRuntime, RDMA: true, Detach: true,
		Annotations: map[string]string{"io.migros.rdma": "true"}}
	run, err := src.RunArgv(ctx, c, "sh", "-c", script)
	if err != nil {
		b.Fatal(err)
	}
	if out, err := src.Output(ctx, run...); err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(2 * time.Second) {
		out, _ := src.Output(ctx, "ctr", "task", "exec", "--exec-id", fmt.Sprint("hold-", time.Now().UnixNano()), p.id, "cat", "/hold.out")
		if strings.Contains(out, "holding") {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%v not holding:\n%s", p, out)
		}
	}
}

// migrate moves p to the other guest, after preCopy rounds of
// pre-copy, its memory streamed to the page server or not, keeping the
// report.
func (p *migPoint) migrate(ctx context.Context, b *testing.B, pki string, preCopy int, pageServer bool) {
	b.Helper()
	p.reports = append(p.reports, migrateTo(ctx, b, p.at, p.to, p.id, pki, preCopy, pageServer))
	p.at, p.to = p.to, p.at
}

// migration is how a benchmark migrates.
type migration struct {
	preCopy    int
	pageServer bool
}

// thereAndBack runs p's container on src, with agents on src and dst,
// moves it to dst with there and back with back, and removes it; it
// returns src.
func (p *migPoint) thereAndBack(ctx context.Context, b *testing.B, there, back migration) *lab.Guest {
	b.Helper()
	src, dst, peer := guest(b, "src"), guest(b, "dst"), guest(b, "peer")
	pki := agentPKI(b, src, dst)
	startAgent(ctx, b, src, pki)
	startAgent(ctx, b, dst, pki)
	p.start(ctx, b, src, dst, peer)
	for _, m := range []migration{there, back} {
		p.migrate(ctx, b, pki, m.preCopy, m.pageServer)
	}
	p.stop(ctx)
	return src
}

// stop removes p's container.
func (p *migPoint) stop(ctx context.Context) { p.at.RemoveContainer(ctx, p.id) }

// breakdown is a migration's blackout by what it went to (seconds).
type breakdown struct {
	blackout, freeze, checkpoint, criuDump, rdmaDump, memDump float64
	transfer, restore, criuRestore, rdmaRestore               float64
	bytes                                                     int64
}

func breakdownOf(r migrate.Report) breakdown {
	d := breakdown{blackout: r.BlackoutMS / 1000, bytes: r.Bytes}
	for _, p := range r.Phases {
		v := p.MS / 1000
		switch p.Name {
		case migrate.PhaseFreeze:
			d.freeze = v
		case migrate.PhaseCheckpoint:
			d.checkpoint = v
		case migrate.PartCRIUDump:
			d.criuDump = v
		case migrate.PartRDMADump:
			d.rdmaDump = v
		case migrate.PartMemoryDump:
			d.memDump = v
		case migrate.PhaseTransfer:
			d.transfer = v
		case migrate.PhaseRestore:
			d.restore = v
		case migrate.PartCRIURestore:
			d.criuRestore = v
		case migrate.PartRDMARestore:
			d.rdmaRestore = v
		}
	}
	return d
}

// median is p's migration with the median blackout.
func (p *migPoint) median() breakdown {
	ds := make([]breakdown, len(p.reports))
	for i, r := range p.reports {
		ds[i] = breakdownOf(r)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].blackout < ds[j].blackout })
	return ds[len(ds)/2]
}

// rdmaShare is the RDMA work's share of the blackout.
func (d breakdown) rdmaShare() float64 { return (d.rdmaDump + d.rdmaRestore) / d.blackout }

// segments splits the blackout into parts that add up, for the plot.
func (d breakdown) segments() []float64 {
	return []float64{
		d.freeze,
		d.checkpoint - d.criuDump,
		d.criuDump - d.rdmaDump - d.memDump, d.memDump, d.rdmaDump,
		d.transfer,
		d.restore - d.criuRestore,
		d.criuRestore - d.rdmaRestore, d.rdmaRestore,
	}
}

var segmentNames = []string{"freeze", "checkpoint: containerd, runc", "CRIU dump: rest", "CRIU dump: memory",
	"RDMA dump", "transfer", "restore: containerd, runc", "CRIU restore: rest", "RDMA restore"}

// BenchmarkMigrate (make bench): the blackout of migros migrate, phase by
// phase, for a container holding 16 QPs and a 64 MiB MR against the same
// container holding 64 MiB without RDMA, migrated in turn (three times
// each, the median reported); then how it grows with QPs and memory.
func BenchmarkMigrate(b *testing.B) {
	ctx := testContext(b, 90*time.Minute)
	src, dst, peer := guest(b, "src"), guest(b, "dst"), guest(b, "peer")
	pki := agentPKI(b, src, dst)
	startAgent(ctx, b, src, pki)
	startAgent(ctx, b, dst, pki)

	rdma := &migPoint{qps: 16, mb: 64, rdma: true, port: 18700}
	plain := &migPoint{qps: 0, mb: 64, port: 18701}
	for _, p := range []*migPoint{rdma, plain} {
		p.start(ctx, b, src, dst, peer)
	}
	// An untimed first migration takes the first-run costs (page cache,
	// containerd's first import).
	rdma.migrate(ctx, b, pki, 0, true)
	rdma.reports = nil
	for r := 0; r < 3; r++ {
		rdma.migrate(ctx, b, pki, 0, true)
		plain.migrate(ctx, b, pki, 0, true)
	}
	rdma.stop(ctx)
	plain.stop(ctx)

	points := []*migPoint{rdma}
	for i, p := range []*migPoint{{qps: 1, mb: 64}, {qps: 64, mb: 64}, {qps: 16, mb: 16}, {qps: 16, mb: 256}} {
		p.rdma, p.port = true, 18710+i
		p.start(ctx, b, src, dst, peer)
		p.migrate(ctx, b, pki, 0, true)
		p.migrate(ctx, b, pki, 0, true)
		p.stop(ctx)
		points = append(points, p)
	}
	sort.SliceStable(points, func(i, j int) bool {
		if points[i].mb != points[j].mb {
			return points[i].mb < points[j].mb
		}
		return points[i].qps < points[j].qps
	})

	s := func(v float64) string { return fmt.Sprintf("%.2f s", v) }
	row := func(rep *strings.Builder, p *migPoint) {
		d := p.median()
		fmt.Fprintf(rep, "| %v | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f MiB | %.1f%% |\n", p,
			s(d.blackout), s(d.freeze), s(d.checkpoint), s(d.criuDump), s(d.rdmaDump), s(d.memDump),
			s(d.transfer), s(d.restore), s(d.criuRestore), s(d.rdmaRestore), float64(d.bytes)/(1<<20), 100*d.rdmaShare())
	}
	head := "| container | blackout | freeze | checkpoint | CRIU dump | RDMA dump | memory dump | transfer | restore | " +
		"CRIU restore | RDMA restore | checkpoint size | RDMA share |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
	r, n := rdma.median(), plain.median()
	var rep strings.Builder
	fmt.Fprintf(&rep, "# Live migration: blackout by phase (%s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&rep, "`make bench`: `migros migrate` of a container under MigrOS' runtime running `rdmacheck -H` "+
		"(RC QPs connected to a peer guest, an MR of the given size, every page touched) between two guests and back, "+
		"in a QEMU lab (TCG, 2 host cores, %d MiB per guest); \"no RDMA\" is the same container touching the same "+
		"memory with no RDMA object (`rdmacheck -H -N`). The two were migrated in turn, three times each; the "+
		"other rows once each way. Each row is the migration with the median blackout. Blackout: from the freeze to the "+
		"container running on the destination. CRIU dump and restore are CRIU's runs (from their logs), inside checkpoint "+
		"and restore; RDMA dump and restore are the time inside MigrOS' CRIU plugin (reading and rebuilding the RDMA "+
		"objects, resuming the QPs), inside CRIU's runs; memory dump is CRIU's own count (collecting and writing the "+
		"pages). The memory goes to the destination's page server as CRIU dumps it (the default): memory dump "+
		"includes sending it, and transfer is the rest of the checkpoint. TCG makes absolute times several times those of real hardware; the ratios are the result.\n\n", src.MemoryMB)
	fmt.Fprintf(&rep, "## 16 QPs and 64 MiB registered, against no RDMA\n\n%s", head)
	row(&rep, rdma)
	row(&rep, plain)
	fmt.Fprintf(&rep, "\n- RDMA migration / no-RDMA migration, blackout: **%.2f×** (target ≤ 1.2×)\n", r.blackout/n.blackout)
	fmt.Fprintf(&rep, "- RDMA work (RDMA dump + RDMA restore) in the RDMA migration's blackout: **%.1f%%** (target ≤ 10%%)\n",
		100*r.rdmaShare())
	fmt.Fprintf(&rep, "- Runs (blackout): RDMA %s; no RDMA %s\n", blackouts(rdma), blackouts(plain))
	fmt.Fprintf(&rep, "\n## Against QPs and memory\n\n%s", head)
	for _, p := range points {
		row(&rep, p)
	}
	fmt.Fprintf(&rep, "\n![blackout by phase](bench-migrate.png)\n\n")
	fmt.Fprintf(&rep, "Pre-copy against none: [bench-migrate-precopy.md](bench-migrate-precopy.md).\n")
	fmt.Println(rep.String())

	chart := &benchplot.Chart{Title: "migros migrate: blackout by phase (TCG lab; median run)", Segments: segmentNames}
	for _, p := range append([]*migPoint{plain}, points...) {
		chart.Rows = append(chart.Rows, benchplot.Row{Label: p.String(), Values: nonNegative(p.median().segments())})
	}
	f, err := os.Create("../_output/bench-migrate.png")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := chart.WritePNG(f); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile("../_output/bench-migrate.md", []byte(rep.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.blackout/n.blackout, "rdma/plain-blackout")
	b.ReportMetric(100*r.rdmaShare(), "%rdma-of-blackout")
}

func blackouts(p *migPoint) string {
	var l []string
	for _, r := range p.reports {
		l = append(l, fmt.Sprintf("%.2f s", r.BlackoutMS/1000))
	}
	return strings.Join(l, ", ")
}

// nonNegative clamps at 0 the rounding of parts measured apart.
func nonNegative(v []float64) []float64 {
	for i := range v {
		v[i] = max(v[i], 0)
	}
	return v
}

// BenchmarkMigratePreCopy (make bench): the blackout of a container with
// 512 MiB of memory and a small working set (rdmacheck -H -N: its first
// MiB rewritten ten times a second) migrated without pre-copy, then back
// with two rounds.
func BenchmarkMigratePreCopy(b *testing.B) {
	ctx := testContext(b, 90*time.Minute)
	p := &migPoint{qps: 0, mb: 512, port: 18720}
	src := p.thereAndBack(ctx, b, migration{pageServer: true}, migration{preCopy: 2, pageServer: true})
	none, pre := breakdownOf(p.reports[0]), breakdownOf(p.reports[1])
	var preCopy float64
	for _, ph := range p.reports[1].Phases {
		if ph.Name == migrate.PhasePreCopy {
			preCopy += ph.MS / 1000
		}
	}

	if pre.bytes > none.bytes/2 {
		b.Errorf("the final checkpoint after pre-copy has %d bytes, without %d: it did not build on the pre-dumps",
			pre.bytes, none.bytes)
	}
	s := func(v float64) string { return fmt.Sprintf("%.2f s", v) }
	var rep strings.Builder
	fmt.Fprintf(&rep, "# Live migration: pre-copy against none (%s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&rep, "`make bench`: a container under MigrOS' runtime holding 512 MiB of memory, every page touched, "+
		"whose working set is small (`rdmacheck -H -N`: its first MiB rewritten ten times a second), migrated by "+
		"`migros migrate` from src to dst without pre-copy, then back with `--pre-copy 2` (each round pre-dumps the "+
		"running container, on top of the round before, its pages streamed to the destination's page server), in a QEMU lab "+
		"(TCG, 2 host cores, %d MiB per guest). TCG makes absolute times several times those of real hardware.\n\n",
		src.MemoryMB)
	fmt.Fprintf(&rep, "| migration | pre-copy rounds (container running) | blackout | checkpoint | CRIU dump | "+
		"memory dump | transfer | restore | CRIU restore | checkpoint size | total |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range []struct {
		name    string
		d       breakdown
		preCopy float64
		total   float64
	}{{"no pre-copy", none, 0, p.reports[0].TotalMS / 1000}, {"2 rounds of pre-copy", pre, preCopy, p.reports[1].TotalMS / 1000}} {
		fmt.Fprintf(&rep, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f MiB | %s |\n", r.name, s(r.preCopy),
			s(r.d.blackout), s(r.d.checkpoint), s(r.d.criuDump), s(r.d.memDump), s(r.d.transfer), s(r.d.restore),
			s(r.d.criuRestore), float64(r.d.bytes)/(1<<20), s(r.total))
	}
	fmt.Fprintf(&rep, "\n- Blackout with pre-copy / without: **%.2f×** (target ≤ 0.5×)\n", pre.blackout/none.blackout)
	fmt.Fprintf(&rep, "- The final checkpoint holds what changed since the last round; the restore still reads "+
		"all 512 MiB, from the pre-dumps the destination already has.\n")
	fmt.Println(rep.String())
	if err := os.WriteFile("../_output/bench-migrate-precopy.md", []byte(rep.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(pre.blackout/none.blackout, "precopy/none-blackout")
}

// The frozen dump's memory streamed to the destination's page server as
// it is dumped, against the same memory in the checkpoint, sent once it
// is taken: an RDMA container (4 QPs, a 256 MiB MR, every page touched)
// moved src -> dst with its memory in the checkpoint, then back streamed.
// The report goes to docs/bench-migrate-pageserver.md.
func BenchmarkMigratePageServer(b *testing.B) {
	ctx := testContext(b, 60*time.Minute)
	p := &migPoint{qps: 4, mb: 256, rdma: true, port: 18730}
	src := p.thereAndBack(ctx, b, migration{}, migration{pageServer: true})
	whole, streamed := breakdownOf(p.reports[0]), breakdownOf(p.reports[1])
	if st := p.reports[1].StreamedBytes; st < p.reports[1].Bytes/2 {
		b.Errorf("streamed %d of %d bytes: the memory did not go to the page server", st, p.reports[1].Bytes)
	}

	s := func(v float64) string { return fmt.Sprintf("%.2f s", v) }
	var rep strings.Builder
	fmt.Fprintf(&rep, "# Live migration: memory streamed to a page server against memory in the checkpoint (%s)\n\n",
		time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&rep, "`make bench`: a container under MigrOS' runtime holding 4 RC QPs and a 256 MiB MR connected to "+
		"the peer (`rdmacheck -H`, every page touched), migrated by `migros migrate` from src to dst with "+
		"`--page-server=false` (CRIU writes the memory into the checkpoint, which then goes through containerd), "+
		"then back with the default (CRIU sends each page, as it dumps it, to `criu page-server` on the "+
		"destination, over the agents' TLS connection; only the rest goes through containerd), in a QEMU lab "+
		"(TCG, 2 host cores, %d MiB per guest). TCG makes absolute times several times those of real hardware.\n\n",
		src.MemoryMB)
	fmt.Fprintf(&rep, "| memory | blackout | checkpoint | CRIU dump | memory dump | transfer | restore | CRIU restore | "+
		"sent | of it streamed |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i, r := range []struct {
		name string
		d    breakdown
	}{{"in the checkpoint", whole}, {"streamed to the page server", streamed}} {
		fmt.Fprintf(&rep, "| %s | %s | %s | %s | %s | %s | %s | %s | %.1f MiB | %.1f MiB |\n", r.name, s(r.d.blackout),
			s(r.d.checkpoint), s(r.d.criuDump), s(r.d.memDump), s(r.d.transfer), s(r.d.restore), s(r.d.criuRestore),
			float64(r.d.bytes)/(1<<20), float64(p.reports[i].StreamedBytes)/(1<<20))
	}
	fmt.Fprintf(&rep, "\n- Blackout streamed / in the checkpoint: **%.2f×**\n", streamed.blackout/whole.blackout)
	fmt.Fprintf(&rep, "- Streamed, the checkpoint phase includes sending the memory; the transfer is what is left.\n")
	fmt.Println(rep.String())
	if err := os.WriteFile("../_output/bench-migrate-pageserver.md", []byte(rep.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(streamed.blackout/whole.blackout, "pageserver/checkpoint-blackout")
}
