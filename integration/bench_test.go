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

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/perftest"
)

// BenchmarkLab reports the lab's performance (make bench-lab): boot time,
// perftest latency and bandwidth, and the latency of each QEMU network
// backend measured side by side in one run, as ratios to the bridge.
func BenchmarkLab(b *testing.B) {
	ctx := testContext(b, 20*time.Minute)
	var rep strings.Builder
	fmt.Fprintf(&rep, "# Lab benchmark (%s)\n\n", time.Now().UTC().Format(time.RFC3339))

	fmt.Fprintf(&rep, "## Boot (%d guests, 1 vCPU each, TCG, 2 host cores)\n\n", len(theLab.Guests()))
	fmt.Fprintf(&rep, "| guest | QEMU start to ready |\n|---|---|\n")
	var names []string
	for n := range theLab.BootTimes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&rep, "| %s | %.1f s |\n", n, theLab.BootTimes[n].Seconds())
	}
	fmt.Fprintf(&rep, "| all, with image import | %.1f s |\n\n", upTime.Seconds())
	b.ReportMetric(upTime.Seconds(), "s/lab-up")

	src, peer := guest(b, "src"), guest(b, "peer")
	fmt.Fprintf(&rep, "## perftest between src and peer (bridge)\n\n| test | result |\n|---|---|\n")
	lat := sendLat(ctx, b, peer, src)
	fmt.Fprintf(&rep, "| ib_send_lat 2 B | typical %.0f us, avg %.0f us, max %.0f us |\n", lat.Typical, lat.Avg, lat.Max)
	b.ReportMetric(lat.Typical, "us/send_lat")
	for _, tool := range []string{"ib_write_bw", "ib_send_bw"} {
		argv := []string{tool, "-n", "500", "-s", "65536"}
		res, err := lab.RunPair(ctx, peer, argv, src, append(argv, peer.Addr()))
		if err != nil {
			b.Fatal(err)
		}
		bw, err := perftest.ParseBW(res.Client)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&rep, "| %s 64 KiB | %.1f MB/s |\n", tool, bw.AvgMBps)
		b.ReportMetric(bw.AvgMBps, "MB/s/"+tool)
	}

	// Network backends, each in a two-guest lab booted in turn while the
	// e2e lab idles, so that all three see the same conditions.
	fmt.Fprintf(&rep, "\n## ib_send_lat by QEMU network backend (2-guest labs, same run)\n\n")
	fmt.Fprintf(&rep, "| backend | typical | avg | typical / bridge |\n|---|---|---|---|\n")
	backends := []struct {
		name string
		net  lab.Net
	}{{"bridge", lab.NetBridge}, {"socket", lab.NetSocket}, {"dgram", lab.NetDgram}}
	var base float64
	for _, be := range backends {
		l, err := lab.Up(ctx, lab.Config{Name: "b" + be.name, Assets: theAssets, Net: be.net,
			Guests: []lab.GuestSpec{lab.DefaultGuests()[0], lab.DefaultGuests()[2]}})
		if err != nil {
			b.Fatal(err)
		}
		r := sendLat(ctx, b, l.Guest("peer"), l.Guest("src"))
		if err := l.Down(context.Background()); err != nil {
			b.Fatal(err)
		}
		if be.net == lab.NetBridge {
			base = r.Typical
		}
		fmt.Fprintf(&rep, "| %s | %.0f us | %.0f us | %.2f |\n", be.name, r.Typical, r.Avg, r.Typical/base)
		b.ReportMetric(r.Typical, "us/send_lat-"+be.name)
	}
	fmt.Println(rep.String())
	if err := os.WriteFile("../_output/bench-lab.md", []byte(rep.String()), 0o644); err != nil {
		b.Log(err)
	}
}

func sendLat(ctx context.Context, b *testing.B, server, client *lab.Guest) perftest.Lat {
	b.Helper()
	argv := []string{"ib_send_lat", "-n", "1000"}
	res, err := lab.RunPair(ctx, server, argv, client, append(argv, server.Addr()))
	if err != nil {
		b.Fatal(err)
	}
	lat, err := perftest.ParseLat(res.Client)
	if err != nil {
		b.Fatal(err)
	}
	return lat
}
