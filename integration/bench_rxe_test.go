// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/perftest"
)

// BenchmarkRXEStockVsPatched measures perftest with Debian's stock rdma_rxe
// and with ours, swapping the modules on src and peer within one lab run,
// several alternations (ABBA order), and reports ours/stock ratios with
// their spread (make bench).
func BenchmarkRXEStockVsPatched(b *testing.B) {
	ctx := testContext(b, 40*time.Minute)
	src, peer := guest(b, "src"), guest(b, "peer")
	type tool struct {
		name, unit string
		argv       []string
		value      func(string) (float64, error)
	}
	lat := func(out string) (float64, error) { r, err := perftest.ParseLat(out); return r.Typical, err }
	bw := func(out string) (float64, error) { r, err := perftest.ParseBW(out); return r.AvgMBps, err }
	tools := []tool{
		{"ib_send_lat 2 B (typical)", "us", []string{"ib_send_lat", "-n", "3000"}, lat},
		{"ib_write_lat 2 B (typical)", "us", []string{"ib_write_lat", "-n", "3000"}, lat},
		{"ib_read_lat 2 B (typical)", "us", []string{"ib_read_lat", "-n", "3000"}, lat},
		{"ib_send_bw 64 KiB", "MB/s", []string{"ib_send_bw", "-n", "1500", "-s", "65536"}, bw},
		{"ib_write_bw 64 KiB", "MB/s", []string{"ib_write_bw", "-n", "1500", "-s", "65536"}, bw},
		{"ib_read_bw 64 KiB", "MB/s", []string{"ib_read_bw", "-n", "1500", "-s", "65536"}, bw},
	}
	const rounds = 6
	// results[tool][module] holds one value per round.
	results := make([]map[lab.RXE][]float64, len(tools))
	for i := range results {
		results[i] = map[lab.RXE][]float64{}
	}
	defer func() {
		// Leave the lab as it was: ours on every guest.
		for _, g := range []*lab.Guest{src, peer} {
			if err := g.LoadRXE(ctx, lab.RXEMigrOS); err != nil {
				b.Error(err)
			}
		}
	}()
	for r := 0; r < rounds; r++ {
		order := []lab.RXE{lab.RXEStock, lab.RXEMigrOS}
		if r%2 == 1 {
			order = []lab.RXE{lab.RXEMigrOS, lab.RXEStock}
		}
		for _, m := range order {
			for _, g := range []*lab.Guest{src, peer} {
				if err := g.LoadRXE(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
			for i, t := range tools {
				res, err := lab.RunPair(ctx, peer, t.argv, src, append(t.argv, peer.Addr()))
				if err != nil {
					b.Fatal(err)
				}
				v, err := t.value(res.Client)
				if err != nil || !(v > 0) {
					b.Fatalf("%s: %v in:\n%s", t.name, err, res.Client)
				}
				results[i][m] = append(results[i][m], v)
			}
		}
	}

	var rep strings.Builder
	fmt.Fprintf(&rep, "# rdma_rxe: ours vs Debian's stock (%s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&rep, "`make bench`: src -> peer in a two-guest QEMU lab (TCG, 2 host cores), modules swapped on both guests "+
		"within one lab run, %d alternations in ABBA order. Ratio = ours / stock within each alternation; mean [min, max]. "+
		"For latency a ratio above 1 means ours is slower, for bandwidth below 1. "+
		"Noise floor = stock / stock between consecutive alternations, [min, max]: "+
		"what the lab can tell apart at all.\n\n", rounds)
	fmt.Fprintf(&rep, "| test | stock (mean) | ours (mean) | ours / stock | spread | noise floor |\n|---|---|---|---|---|---|\n")
	for i, t := range tools {
		st, ou := results[i][lab.RXEStock], results[i][lab.RXEMigrOS]
		var ratios, floor []float64
		for k := range st {
			ratios = append(ratios, ou[k]/st[k])
			if k > 0 {
				floor = append(floor, st[k]/st[k-1])
			}
		}
		lo, hi, mean := spread(ratios)
		flo, fhi, _ := spread(floor)
		_, _, ms := spread(st)
		_, _, mo := spread(ou)
		fmt.Fprintf(&rep, "| %s | %.1f %s | %.1f %s | %.3f | [%.3f, %.3f] | [%.3f, %.3f] |\n",
			t.name, ms, t.unit, mo, t.unit, mean, lo, hi, flo, fhi)
		b.ReportMetric(mean, "ratio/"+strings.Fields(t.name)[0])
	}
	fmt.Println(rep.String())
	if err := os.WriteFile("../_output/bench-rxe.md", []byte(rep.String()), 0o644); err != nil {
		b.Log(err)
	}
}

func spread(v []float64) (lo, hi, mean float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		lo, hi, mean = math.Min(lo, x), math.Max(hi, x), mean+x
	}
	return lo, hi, mean / float64(len(v))
}
