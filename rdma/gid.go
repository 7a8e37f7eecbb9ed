// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// sysfs is where PortGIDs reads the device tables; tests point it elsewhere.
const sysfs = "/sys"

// PortGIDs lists the GIDs (as IPv6 addresses, without repeats) that the
// RDMA device behind a uverbs character device (/dev/infiniband/uverbsN)
// has on its ports. A UD QP is reached at any of them, so a UD QP that
// moves announces its move from each.
func PortGIDs(uverbs string) ([]string, error) {
	return portGIDs(sysfs, uverbs)
}

func portGIDs(root, uverbs string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "class/infiniband_verbs", filepath.Base(uverbs), "ibdev"))
	if err != nil {
		return nil, fmt.Errorf("rdma: device of %s: %w", uverbs, err)
	}
	files, err := filepath.Glob(filepath.Join(root, "class/infiniband", strings.TrimSpace(string(b)), "ports/*/gids/*"))
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var gids []string
	for _, f := range files {
		v, err := os.ReadFile(f)
		if err != nil {
			continue // a GID table entry may vanish as we read
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(string(v)))
		if err != nil || ip.IsUnspecified() || seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		gids = append(gids, ip.String())
	}
	sort.Strings(gids)
	return gids, nil
}

// gidBytes encodes GIDs for the driver: 16 bytes each.
func gidBytes(gids []string) ([]byte, error) {
	var b []byte
	for _, g := range gids {
		ip, err := netip.ParseAddr(g)
		if err != nil {
			return nil, fmt.Errorf("rdma: %q is not a GID", g)
		}
		a := ip.As16()
		b = append(b, a[:]...)
	}
	return b, nil
}
