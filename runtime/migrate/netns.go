// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Netns is a container's named network namespace (ip netns), which moves
// with it: its links, each a macvlan of the host's uplink with the
// container's own MAC and addresses, so that its TCP connections keep
// their address.
type Netns struct {
	Name  string `json:"name"`
	Links []Link `json:"links"`
}

// Link is a macvlan of a Netns.
type Link struct {
	Name  string   `json:"name"`
	MAC   string   `json:"mac"`
	Addrs []string `json:"addrs"` // ADDRESS/PREFIX
}

// netnsDirs are where ip netns keeps named namespaces.
var netnsDirs = []string{"/var/run/netns", "/run/netns"}

// specNetns is the name of the named network namespace the container
// joins, "" if none (its own, made by runc, or the host's).
func specNetns(s *specs.Spec) string {
	if s.Linux == nil {
		return ""
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace && ns.Path != "" {
			for _, d := range netnsDirs {
				if filepath.Dir(ns.Path) == d {
					return filepath.Base(ns.Path)
				}
			}
		}
	}
	return ""
}

// hostNetwork says whether the container runs in the host's network
// namespace.
func hostNetwork(s *specs.Spec) bool {
	if s.Linux == nil {
		return true
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return false
		}
	}
	return true
}

func ip(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// readNetns describes named network namespace name; a link that is not a
// macvlan cannot move.
func readNetns(ctx context.Context, name string) (*Netns, error) {
	out, err := ip(ctx, "-d", "-j", "-n", name, "addr", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		IfName   string `json:"ifname"`
		Address  string `json:"address"`
		LinkType string `json:"link_type"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
			Scope     string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", name, err)
	}
	n := &Netns{Name: name}
	for _, l := range links {
		if l.LinkType == "loopback" {
			continue
		}
		if l.LinkInfo.Kind != "macvlan" {
			return nil, fmt.Errorf("%w: network namespace %s: link %s is a %q; only macvlan links move with a container",
				errdefs.ErrNotImplemented, name, l.IfName, l.LinkInfo.Kind)
		}
		link := Link{Name: l.IfName, MAC: l.Address}
		for _, a := range l.AddrInfo {
			if a.Scope == "global" {
				link.Addrs = append(link.Addrs, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
			}
		}
		n.Links = append(n.Links, link)
	}
	return n, nil
}

// setLinks brings the namespace's links up or down: down, the source's
// copy of the container's addresses leaves the network while the
// destination's takes over; up again if the move is undone.
func (n *Netns) setLinks(ctx context.Context, state string) error {
	for _, l := range n.Links {
		if _, err := ip(ctx, "-n", n.Name, "link", "set", "dev", l.Name, state); err != nil {
			return err
		}
	}
	return nil
}

// create makes the namespace on this host, its links macvlans of uplink.
func (n *Netns) create(ctx context.Context, uplink string) (err error) {
	if _, err := ip(ctx, "netns", "add", n.Name); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = n.remove(context.WithoutCancel(ctx))
		}
	}()
	for i, l := range n.Links {
		tmp := fmt.Sprintf("migros%d", i)
		steps := [][]string{
			{"link", "add", tmp, "address", l.MAC, "link", uplink, "type", "macvlan", "mode", "bridge"},
			{"link", "set", tmp, "netns", n.Name},
			{"-n", n.Name, "link", "set", tmp, "name", l.Name},
		}
		for _, a := range l.Addrs {
			steps = append(steps, []string{"-n", n.Name, "addr", "add", a, "dev", l.Name})
		}
		steps = append(steps, []string{"-n", n.Name, "link", "set", l.Name, "up"})
		for _, s := range steps {
			if _, err := ip(ctx, s...); err != nil {
				return err
			}
		}
	}
	_, err = ip(ctx, "-n", n.Name, "link", "set", "lo", "up")
	return err
}

// remove deletes the namespace (its links go with it once no process is
// left in it).
func (n *Netns) remove(ctx context.Context) error {
	_, err := ip(ctx, "netns", "del", n.Name)
	return err
}
