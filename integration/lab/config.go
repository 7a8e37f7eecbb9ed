// SPDX-License-Identifier: Apache-2.0

// Package lab runs MigrOS' test lab: QEMU guests (software emulation)
// booting Debian's stock 6.1 kernel with our rdma_rxe, on a private L2
// network that lives in a network namespace of the lab's own. Each guest
// shares the host's / read-only over 9p, runs containerd with runc and
// CRIU, and is driven from the host through a control channel.
package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// Assets are the files a lab boots from, made by `make lab-assets`, which
// records them in _output/lab/assets.json.
type Assets struct {
	Kernel    string `json:"kernel"`     // Debian's vmlinuz
	Initrd    string `json:"initrd"`     // our initramfs
	Modules   string `json:"modules"`    // root holding lib/modules/<release>
	RXE       string `json:"rxe"`        // our rdma_rxe.ko
	Bin       string `json:"bin"`        // containerd, ctr, runc, migros-lab ...
	GuestInit string `json:"guest_init"` // hack/lab/guest-init
	Image     string `json:"image"`      // OCI archive of the RDMA test image
	// MigrosVersion is the patch-series version RXE was built from.
	MigrosVersion string `json:"migros_version"`
}

// LoadAssets reads an assets.json.
func LoadAssets(path string) (Assets, error) {
	var a Assets
	b, err := os.ReadFile(path)
	if err != nil {
		return a, fmt.Errorf("lab assets: %w (run make lab-assets)", err)
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("lab assets %s: %w", path, err)
	}
	return a, a.check()
}

func (a Assets) check() error {
	for what, p := range map[string]string{
		"kernel": a.Kernel, "initrd": a.Initrd, "modules": a.Modules, "rxe": a.RXE,
		"bin": a.Bin, "guest_init": a.GuestInit, "image": a.Image,
	} {
		if p == "" || !filepath.IsAbs(p) {
			return fmt.Errorf("lab assets: %s must be an absolute path, got %q", what, p)
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("lab assets: %s: %w (run make lab-assets)", what, err)
		}
	}
	return nil
}

// RXE selects the rdma_rxe a guest loads.
type RXE string

const (
	RXEMigrOS RXE = ""      // ours, Assets.RXE
	RXEStock  RXE = "stock" // Debian's, from the kernel image
)

// GuestSpec describes one guest.
type GuestSpec struct {
	Name     string `json:"name"`
	IP       string `json:"ip"` // address/prefix on the lab network
	MAC      string `json:"mac"`
	MemoryMB int    `json:"memory_mb"`
	RXE      RXE    `json:"rxe,omitempty"`
}

// Addr is the guest's address on the lab network, without the prefix.
func (g GuestSpec) Addr() string {
	for i := range len(g.IP) {
		if g.IP[i] == '/' {
			return g.IP[:i]
		}
	}
	return g.IP
}

// DefaultGuests are the three hosts of the MigrOS scenarios: the source and
// destination of a migration, and a peer that keeps talking to the migrating
// container.
func DefaultGuests() []GuestSpec {
	return []GuestSpec{
		{Name: "src", IP: "192.168.77.11/24", MAC: "52:54:00:77:00:11", MemoryMB: 1536},
		{Name: "dst", IP: "192.168.77.12/24", MAC: "52:54:00:77:00:12", MemoryMB: 1536},
		{Name: "peer", IP: "192.168.77.13/24", MAC: "52:54:00:77:00:13", MemoryMB: 1536},
	}
}

// GuestsNamed returns the default guests called names, in that order.
func GuestsNamed(names ...string) ([]GuestSpec, error) {
	var guests []GuestSpec
	for _, name := range names {
		found := false
		for _, g := range DefaultGuests() {
			if g.Name == name {
				guests, found = append(guests, g), true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown guest %q (have src, dst, peer)", name)
		}
	}
	return guests, nil
}

// Net selects how guests are linked.
type Net string

const (
	// NetBridge: a tap per guest on a bridge in the lab's namespace (default).
	NetBridge Net = ""
	// NetSocket: QEMU's -netdev socket, a TCP stream between two guests'
	// QEMU processes on the namespace's loopback. Kept for comparison.
	NetSocket Net = "socket"
	// NetDgram: QEMU's -netdev dgram, UDP between two guests' QEMU
	// processes on the namespace's loopback. Kept for comparison.
	NetDgram Net = "dgram"
)

// Config describes a lab.
type Config struct {
	// Name tells labs apart: namespace migros-<Name>, state in
	// <StateRoot>/<Name>.
	Name   string      `json:"name"`
	Assets Assets      `json:"assets"`
	Guests []GuestSpec `json:"guests"`
	// StateRoot holds sockets, console logs and guest shares
	// (default /run/migros-lab).
	StateRoot string `json:"state_root,omitempty"`
	// Net is the guests' network; NetSocket and NetDgram link exactly two.
	Net Net `json:"net,omitempty"`
	// Log receives progress lines; nil discards them.
	Log io.Writer `json:"-"`
}

// DefaultStateRoot is where labs keep their state.
const DefaultStateRoot = "/run/migros-lab"

func (c *Config) stateRoot() string {
	if c.StateRoot != "" {
		return c.StateRoot
	}
	return DefaultStateRoot
}

// StateDir is the directory of this lab's state.
func (c *Config) StateDir() string { return filepath.Join(c.stateRoot(), c.Name) }

// Netns is the lab's network namespace.
func (c *Config) Netns() string { return "migros-" + c.Name }

func (c *Config) validate() error {
	if c.Name == "" || len(c.Name) > 8 {
		return errors.New("lab: name must have 1 to 8 characters")
	}
	for _, r := range c.Name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return fmt.Errorf("lab: name %q: only a-z and 0-9", c.Name)
		}
	}
	if len(c.Guests) == 0 {
		return errors.New("lab: no guests")
	}
	switch c.Net {
	case NetBridge:
	case NetSocket, NetDgram:
		if len(c.Guests) != 2 {
			return fmt.Errorf("lab: network %q links exactly two guests", c.Net)
		}
	default:
		return fmt.Errorf("lab: unknown network %q", c.Net)
	}
	seen := map[string]bool{}
	for _, g := range c.Guests {
		if g.Name == "" || len(g.Name) > 6 || seen[g.Name] {
			return fmt.Errorf("lab: guest name %q must be unique and 1 to 6 characters", g.Name)
		}
		seen[g.Name] = true
		if g.IP == "" || g.MAC == "" || g.MemoryMB < 256 {
			return fmt.Errorf("lab: guest %s needs an IP, a MAC and at least 256 MB", g.Name)
		}
	}
	return c.Assets.check()
}

// PatchSeriesVersion computes the version our rdma_rxe reports in its
// migros_version parameter from the patches in dir (kernel/patches): the
// number of patches and a digest of their contents in order, exactly as
// hack/build-rxe.sh does.
func PatchSeriesVersion(dir string) (string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.patch"))
	if err != nil {
		return "", err
	}
	if len(paths) == 0 {
		return "", fmt.Errorf("no patches in %s", dir)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return fmt.Sprintf("%d-%s", len(paths), hex.EncodeToString(h.Sum(nil))[:12]), nil
}
