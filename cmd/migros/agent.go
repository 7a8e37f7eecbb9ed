// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/container"
	"github.com/migros/migros/runtime/install"
	"github.com/migros/migros/runtime/migrate"
)

// agentCmd runs the agent, or makes the agents' identities, or asks an
// agent about its host.
func agentCmd(ctx context.Context, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "init":
			return agentInit(args[1:])
		case "ping":
			return agentPing(ctx, args[1:])
		}
	}
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	listen := fs.String("listen", ":"+agent.DefaultPort, "TCP address to serve on")
	pki := fs.String("pki", install.Beside().PKIDir(), "this host's identity (migros agent init)")
	address := fs.String("address", container.DefaultAddress, "containerd's socket")
	ns := fs.String("namespace", "default", "containerd namespace")
	root := fs.String("root", "/var/lib/containerd", "containerd's data directory")
	state := fs.String("state", "/run/containerd", "containerd's state directory")
	uplink := fs.String("uplink", defaultUplink(), "interface incoming containers' network links are made on")
	fs.Parse(args)
	id, err := agent.LoadIdentity(*pki)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	d := &migrate.Destination{Address: *address, Namespace: *ns, Uplink: *uplink, Root: *root, State: *state}
	// What migrations whose source died left here, and the migrations
	// from here whose migros migrate died past the freeze.
	go d.Sweep(ctx, time.Hour)
	go migrate.Recover(ctx, id, recoverEvery)
	s := &agent.Server{ID: id, Info: agent.HostInfo, Routes: d.Routes()}
	return s.Serve(ctx, l)
}

// recoverEvery is how often the agent looks for migrations from this
// host whose migros migrate died past the freeze.
const recoverEvery = 5 * time.Second

// defaultUplink is the interface of the default route, else the only
// interface besides lo, else eth0.
func defaultUplink() string {
	b, _ := os.ReadFile("/proc/net/route")
	for _, l := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(l); len(f) > 2 && f[1] == "00000000" {
			return f[0]
		}
	}
	ents, _ := os.ReadDir("/sys/class/net")
	var ifs []string
	for _, e := range ents {
		if e.Name() != "lo" {
			ifs = append(ifs, e.Name())
		}
	}
	if len(ifs) == 1 {
		return ifs[0]
	}
	return "eth0"
}

// agentInit makes the agents' CA, once, and each named host's identity.
func agentInit(args []string) error {
	fs := flag.NewFlagSet("agent init", flag.ExitOnError)
	out := fs.String("out", "", "directory for the CA and the hosts' identities (required)")
	validity := fs.Duration("validity", 365*24*time.Hour, "how long the certificates are valid")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: migros agent init --out DIR NAME=IP[,IP...]...")
		fs.PrintDefaults()
	}
	fs.Parse(args)
	if *out == "" || fs.NArg() == 0 {
		fs.Usage()
		return errors.New("--out and at least one host are required")
	}
	var hosts []agent.Host
	for _, a := range fs.Args() {
		name, ips, _ := strings.Cut(a, "=")
		h := agent.Host{Name: name}
		for _, s := range strings.Split(ips, ",") {
			ip := net.ParseIP(s)
			if ip == nil {
				return fmt.Errorf("host %q: %q is not an IP address", a, s)
			}
			h.IPs = append(h.IPs, ip)
		}
		hosts = append(hosts, h)
	}
	if err := agent.Init(*out, hosts, *validity); err != nil {
		return err
	}
	for _, h := range hosts {
		fmt.Printf("%s: copy %s to %s on that host\n", h.Name, filepath.Join(*out, h.Name), install.Beside().PKIDir())
	}
	return nil
}

// agentPing asks an agent about its host, with this host's identity.
func agentPing(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("agent ping", flag.ExitOnError)
	pki := fs.String("pki", install.Beside().PKIDir(), "this host's identity")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("usage: migros agent ping [--pki DIR] HOST[:PORT]")
	}
	id, err := agent.LoadIdentity(*pki)
	if err != nil {
		return err
	}
	info, err := agent.NewClient(id, fs.Arg(0)).Info(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("%s: host %s, rdma_rxe %q\n", fs.Arg(0), info.Host, info.RxeVersion)
	return nil
}
