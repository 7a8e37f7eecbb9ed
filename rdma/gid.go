// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"golang.org/x/sys/unix"
)

// The core's GID table query (UVERBS_METHOD_QUERY_GID_TABLE): one call
// returns every valid entry, where sysfs takes one file read per entry of
// the (1024-entry) table.
const (
	methodQueryGIDTable = 5
	attrGIDEntrySize    = 0
	attrGIDEntries      = 2
	attrGIDNumEntries   = 3
	gidEntrySize        = 32 // struct ib_uverbs_gid_entry
)

// GIDs lists the GIDs (as IPv6 addresses, sorted, without repeats) that
// the context's device has on its ports. A UD QP is reached at any of
// them, so a UD QP that moves announces its move from each.
func (c *Context) GIDs() ([]string, error) {
	for capacity := 16; ; capacity *= 4 {
		entries := make([]byte, capacity*gidEntrySize)
		num := make([]byte, 8)
		attrs := []attr{
			{id: attrGIDEntrySize, len: 8, data: gidEntrySize},
			outAttr(attrGIDEntries, entries),
			outAttr(attrGIDNumEntries, num),
		}
		err := c.ioctl("query GID table", objDevice, methodQueryGIDTable, attrs, entries, num)
		// The kernel refuses a buffer too small for the valid entries.
		if errors.Is(err, unix.EINVAL) && capacity < 4096 {
			continue
		}
		if err != nil {
			return nil, err
		}
		n := int(binary.LittleEndian.Uint64(num))
		if n > capacity {
			return nil, fmt.Errorf("rdma: %s: %d GID entries in room for %d", c.Path, n, capacity)
		}
		return decodeGIDEntries(entries, n), nil
	}
}

// decodeGIDEntries takes the GIDs of n struct ib_uverbs_gid_entry.
func decodeGIDEntries(b []byte, n int) []string {
	seen := map[string]bool{}
	var gids []string
	for i := 0; i < n; i++ {
		var a [16]byte
		copy(a[:], b[i*gidEntrySize:])
		ip := netip.AddrFrom16(a)
		if ip.IsUnspecified() || seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		gids = append(gids, ip.String())
	}
	sort.Strings(gids)
	return gids
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
