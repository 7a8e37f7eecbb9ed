// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The lab's L2 network: a bridge inside the lab's own network namespace,
// with one tap per guest. Nothing is configured in the host's namespace and
// the bridge has no address, so lab traffic never leaves the namespace.
const bridgeName = "br0"

func tapName(guest string) string { return "tap-" + guest }

func setupNetwork(ctx context.Context, cfg *Config) error {
	ns := cfg.Netns()
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return fmt.Errorf("lab network: %w", err)
	}
	cmds := [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", bridgeName, "type", "bridge"},
		// Forward at once: no STP listening delay for taps.
		{"ip", "link", "set", bridgeName, "type", "bridge", "forward_delay", "0", "stp_state", "0"},
		{"ip", "link", "set", bridgeName, "up"},
	}
	for _, g := range cfg.Guests {
		if cfg.Net != NetBridge {
			break
		}
		tap := tapName(g.Name)
		cmds = append(cmds,
			[]string{"ip", "tuntap", "add", "mode", "tap", "name", tap},
			[]string{"ip", "link", "set", tap, "master", bridgeName},
			[]string{"ip", "link", "set", tap, "up"},
		)
	}
	for _, c := range cmds {
		if err := run(ctx, append([]string{"ip", "netns", "exec", ns}, c...)...); err != nil {
			return fmt.Errorf("lab network: %w", err)
		}
	}
	return nil
}

// Ports on the namespace's loopback for the point-to-point networks.
const (
	p2pPortA = 47011
	p2pPortB = 47012
)

// netdevArg is the -netdev argument of guest number i.
func netdevArg(cfg *Config, i int, guest string) string {
	switch cfg.Net {
	case NetSocket:
		if i == 0 {
			return fmt.Sprintf("socket,id=net0,listen=127.0.0.1:%d", p2pPortA)
		}
		return fmt.Sprintf("socket,id=net0,connect=127.0.0.1:%d", p2pPortA)
	case NetDgram:
		local, remote := p2pPortA, p2pPortB
		if i == 1 {
			local, remote = remote, local
		}
		return fmt.Sprintf("dgram,id=net0,local.type=inet,local.host=127.0.0.1,local.port=%d,"+
			"remote.type=inet,remote.host=127.0.0.1,remote.port=%d", local, remote)
	}
	return "tap,id=net0,ifname=" + tapName(guest) + ",script=no,downscript=no"
}

// removeNetwork deletes the lab's namespace with its bridge and taps.
func removeNetwork(ctx context.Context, cfg *Config) error {
	ns := cfg.Netns()
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
		return nil
	}
	if err := run(ctx, "ip", "netns", "delete", ns); err != nil {
		return fmt.Errorf("lab network: %w", err)
	}
	return nil
}

// labNamespaces lists the names of labs that have a namespace.
func labNamespaces(ctx context.Context) []string {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "migros-") {
			names = append(names, strings.TrimPrefix(f[0], "migros-"))
		}
	}
	return names
}

// QEMU processes carry "-name migros-lab:<lab>:<guest>" so that they can be
// found even when their pid files are gone.
const procTag = "migros-lab:"

func qemuName(lab, guest string) string { return procTag + lab + ":" + guest }

// labProcesses returns the pids of QEMU processes of lab (every lab if
// lab is empty), keyed by pid, valued by lab name.
func labProcesses(lab string) map[int]string { return labProcessesOf(lab, "") }

// labProcessesOf is labProcesses restricted to one guest when guest is set.
func labProcessesOf(lab, guest string) map[int]string {
	procs := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			// -name takes "guest-name[,process=...]".
			arg, _, _ = strings.Cut(arg, ",")
			if !strings.HasPrefix(arg, procTag) {
				continue
			}
			l, gn, _ := strings.Cut(strings.TrimPrefix(arg, procTag), ":")
			if (lab == "" || l == lab) && (guest == "" || gn == guest) {
				procs[pid] = l
			}
		}
	}
	return procs
}

func labProcessNames() []string {
	var names []string
	for _, l := range labProcesses("") {
		names = append(names, l)
	}
	return names
}

// killGuests stops the lab's QEMU processes: SIGTERM, then SIGKILL.
func killGuests(stateDir, lab string) error {
	procs := labProcesses(lab)
	for pid := range procs {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(procs) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		procs = labProcesses(lab)
	}
	for pid := range procs {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(procs) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		procs = labProcesses(lab)
	}
	if len(procs) > 0 {
		return fmt.Errorf("lab %s: QEMU processes %v did not exit", lab, procs)
	}
	pids, _ := filepath.Glob(filepath.Join(stateDir, "*", "qemu.pid"))
	for _, p := range pids {
		os.Remove(p)
	}
	return nil
}
