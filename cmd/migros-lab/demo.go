// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/perftest"
)

// demo is the README's main job: boot the lab, then run RDMA traffic
// between containers on src and peer through containerd, and tear down.
func demo(ctx context.Context, args []string) (err error) {
	var f labFlags
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	f.register(fs)
	fs.Parse(args)
	if f.name == "lab" {
		f.name = "demo"
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	start := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		if derr := l.Down(context.WithoutCancel(ctx)); err == nil {
			err = derr
		}
	}()
	fmt.Printf("\n== lab up in %.0fs\n", time.Since(start).Seconds())
	printStatus(ctx, l)

	src, peer := l.Guest("src"), l.Guest("peer")
	fmt.Printf("\n== ib_write_bw: container on src -> container on peer (RoCEv2 over our rdma_rxe)\n")
	server, err := peer.RunArgv(ctx, lab.Container{ID: "demo-server", RDMA: true}, "ib_write_bw", "-n", "500")
	if err != nil {
		return err
	}
	client, err := src.RunArgv(ctx, lab.Container{ID: "demo-client", RDMA: true}, "ib_write_bw", "-n", "500", peer.Addr())
	if err != nil {
		return err
	}
	res, err := lab.RunPair(ctx, peer, server, src, client)
	if err != nil {
		return err
	}
	bw, err := perftest.ParseBW(res.Client)
	if err != nil {
		return fmt.Errorf("ib_write_bw: %w:\n%s", err, res.Client)
	}
	fmt.Printf("%d x %d B written, average %.1f MB/s\n", bw.Iterations, bw.Bytes, bw.AvgMBps)

	fmt.Printf("\n== ibv_rc_pingpong with buffer validation: container on src -> peer\n")
	pp := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", "200"}
	client, err = src.RunArgv(ctx, lab.Container{ID: "demo-pingpong", RDMA: true}, append(pp, peer.Addr())...)
	if err != nil {
		return err
	}
	res, err = lab.RunPair(ctx, peer, pp, src, client)
	if err != nil {
		return err
	}
	p, err := perftest.ParsePingpong(res.Client)
	if err != nil {
		return fmt.Errorf("ibv_rc_pingpong: %w:\n%s", err, res.Client)
	}
	fmt.Printf("%d round trips validated, %.0f us each\n", p.Iterations, p.UsecPerIter)
	fmt.Fprintf(os.Stdout, "\n== demo done in %.0fs; tearing the lab down\n", time.Since(start).Seconds())
	return nil
}
