// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
	"github.com/migros/migros/integration/perftest"
	migrosagent "github.com/migros/migros/runtime/agent"
)

// The demo's moving container: its name, network namespace, address and
// MAC (which move with it), and its traffic with the peer.
const (
	demoID, demoNS, demoAddr, demoMAC = "demo-app", "demo-app", "192.168.77.60/24", "02:00:c0:a8:4d:3c"
	demoPerfPort                      = 18600
	demoPerfIters, demoPerfSize       = 3000, 65536
	demoMsgs                          = "5000"
)

// demo is the README's main job: boot the lab (src, dst, peer), run an
// RDMA container on src that streams to peer (ib_write_bw, and rdmacheck,
// which checks every message), migrate it live to dst with migros
// migrate while the traffic flows, show the report and the traffic's
// results, and tear down.
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
	src, dst, peer := l.Guest("src"), l.Guest("dst"), l.Guest("peer")
	if src == nil || dst == nil || peer == nil {
		return fmt.Errorf("the demo needs the guests src, dst and peer")
	}

	// The agents, with an identity each from one CA, in a directory of
	// the host that the guests see.
	pki, err := os.MkdirTemp("", "migros-demo-pki-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(pki)
	var hosts []migrosagent.Host
	for _, g := range []*lab.Guest{src, dst} {
		hosts = append(hosts, migrosagent.Host{Name: g.Name, IPs: []net.IP{net.ParseIP(g.Addr())}})
	}
	if err := migrosagent.Init(pki, hosts, time.Hour); err != nil {
		return err
	}
	for _, g := range []*lab.Guest{src, dst} {
		p, err := g.Start(ctx, &control.Cmd{Argv: []string{"migros", "agent", "--pki", filepath.Join(pki, g.Name)}})
		if err != nil {
			return err
		}
		defer p.Kill()
		if err := g.WaitListening(ctx, migrosagent.DefaultPortNumber, p); err != nil {
			return err
		}
	}
	fmt.Printf("\n== migros agent on src and dst (mutual TLS, one CA)\n")

	// The peer's ends of the traffic, as plain processes.
	perf := []string{"ib_write_bw", "-x", "1", "-n", fmt.Sprint(demoPerfIters), "-s", fmt.Sprint(demoPerfSize), "-p", fmt.Sprint(demoPerfPort)}
	check := []string{"rdmacheck", "-n", demoMsgs, "-s", "4096"}
	var perfOut, checkOut bytes.Buffer
	perfSrv, err := peer.Start(ctx, &control.Cmd{Argv: perf, Stdout: &perfOut, Stderr: &perfOut})
	if err != nil {
		return err
	}
	defer perfSrv.Kill()
	checkSrv, err := peer.Start(ctx, &control.Cmd{Argv: check, Stdout: &checkOut, Stderr: &checkOut})
	if err != nil {
		return err
	}
	defer checkSrv.Kill()
	for port, p := range map[int]*control.Process{demoPerfPort: perfSrv, lab.RDMAPort: checkSrv} {
		if err := peer.WaitListening(ctx, port, p); err != nil {
			return err
		}
	}

	// The container on src, in a network namespace of its own.
	fmt.Printf("\n== container %s on src (runtime io.containerd.migros.v1, address %s): ib_write_bw and rdmacheck to peer\n",
		demoID, demoAddr)
	if err := src.MacvlanNetns(ctx, demoNS, demoAddr, demoMAC); err != nil {
		return err
	}
	defer func() {
		for _, g := range []*lab.Guest{src, dst} {
			g.RemoveContainer(context.WithoutCancel(ctx), demoID)
		}
	}()
	bin, err := src.Output(ctx, "sh", "-c", "command -v rdmacheck")
	if err != nil {
		return err
	}
	script := fmt.Sprintf("%s %s >/perf.out 2>&1 & %s %s -w 5000 %s >/check.out 2>&1 & wait; exec sleep 3600",
		strings.Join(perf, " "), peer.Addr(), strings.TrimSpace(bin), strings.Join(check[1:], " "), peer.Addr())
	run, err := src.RunArgv(ctx, lab.Container{ID: demoID, Runtime: "io.containerd.migros.v1", NetNS: demoNS, Detach: true,
		Annotations: map[string]string{"io.migros.rdma": "true"}}, "sh", "-c", script)
	if err != nil {
		return err
	}
	if out, err := src.Output(ctx, run...); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	time.Sleep(5 * time.Second)

	fmt.Printf("\n== migros migrate %s --to dst, mid-transfer\n", demoID)
	out, err := src.Output(ctx, "migros", "migrate", demoID, "--to", dst.Addr(), "--pki", filepath.Join(pki, "src"))
	fmt.Print(out)
	if err != nil {
		return err
	}

	fmt.Printf("\n== the traffic finishes with the container on dst\n")
	for what, p := range map[string]*control.Process{"ib_write_bw": perfSrv, "rdmacheck": checkSrv} {
		select {
		case <-p.Done():
		case <-time.After(5 * time.Minute):
			return fmt.Errorf("the peer's %s did not finish", what)
		}
		if err := p.Wait(); err != nil {
			return fmt.Errorf("the peer's %s: %w\n%s", what, err, map[string]*bytes.Buffer{"ib_write_bw": &perfOut, "rdmacheck": &checkOut}[what])
		}
	}
	bw, err := perftest.ParseBW(perfOut.String())
	if err != nil {
		return fmt.Errorf("ib_write_bw: %w:\n%s", err, perfOut.String())
	}
	fmt.Printf("peer: ib_write_bw: %d x %d B, average %.1f MB/s, no error\n", bw.Iterations, bw.Bytes, bw.AvgMBps)
	fmt.Printf("peer: rdmacheck: %s\n", strings.TrimSpace(checkOut.String()))
	if !strings.Contains(checkOut.String(), "all in order and intact") {
		return fmt.Errorf("rdmacheck did not receive every message intact")
	}
	fmt.Printf("\n== demo done in %.0fs; tearing the lab down\n", time.Since(start).Seconds())
	return nil
}
