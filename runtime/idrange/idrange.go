// SPDX-License-Identifier: Apache-2.0

// Package idrange is a host's policy for the IDs its rdma_rxe gives new
// objects: the range of QPNs, and of MR and MW key indices (key >> 8),
// allocated here. A restored object keeps the IDs its peers know, so a
// migration into a host fails if that host already gave one of them
// away; hosts that allocate from disjoint ranges never do. MigrOS' rxe
// (patch 0018) takes the ranges as module parameters; the policy lives
// in a file (ids.conf) that the shim applies before an RDMA container
// starts and `migros ids` shows and applies:
//
//	# IDs this host gives new objects (MIN-MAX, inclusive)
//	qpn = 0x1000-0x1fff
//	mr  = 0x1000-0x1fff
//	mw  = 0x11000-0x11fff
//
// A kind left out is allocated from its whole range.
package idrange

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// ParamsDir holds rdma_rxe's module parameters.
const ParamsDir = "/sys/module/rdma_rxe/parameters"

// Range is an inclusive range of indices; the zero Range is the whole
// range of its kind.
type Range struct{ Min, Max uint32 }

func (r Range) String() string {
	if r == (Range{}) {
		return "any"
	}
	return fmt.Sprintf("%#x-%#x", r.Min, r.Max)
}

// param is r as the module parameter takes it.
func (r Range) param() string {
	if r == (Range{}) {
		return ""
	}
	return fmt.Sprintf("%#x-%#x", r.Min, r.Max)
}

// Kinds are the ID kinds a policy has ranges for, by their name in
// ids.conf; each is the module parameter migros_<kind>_range.
var Kinds = []string{"qpn", "mr", "mw"}

// Policy maps kinds to their ranges; a kind it lacks is unrestricted.
type Policy map[string]Range

func (p Policy) String() string {
	var s []string
	for _, k := range Kinds {
		s = append(s, k+" "+p[k].String())
	}
	return strings.Join(s, ", ")
}

// parseRange reads MIN-MAX (each in any base strconv takes with base 0),
// or "" for the whole range.
func parseRange(s string) (Range, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Range{}, nil
	}
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return Range{}, fmt.Errorf("range %q: want MIN-MAX", s)
	}
	min, err := strconv.ParseUint(strings.TrimSpace(lo), 0, 32)
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	max, err := strconv.ParseUint(strings.TrimSpace(hi), 0, 32)
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	if min == 0 || min > max {
		return Range{}, fmt.Errorf("range %q: want 0 < MIN <= MAX", s)
	}
	return Range{uint32(min), uint32(max)}, nil
}

// Parse reads a policy: lines "KIND = MIN-MAX", the value optionally
// quoted; blank lines and lines starting with # are skipped.
func Parse(b []byte) (Policy, error) {
	p := Policy{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || !known(k) {
			return nil, fmt.Errorf("line %d: %q: want one of %v = MIN-MAX", n, line, Kinds)
		}
		if _, dup := p[k]; dup {
			return nil, fmt.Errorf("line %d: %s given twice", n, k)
		}
		r, err := parseRange(strings.Trim(strings.TrimSpace(v), `"`))
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", n, k, err)
		}
		p[k] = r
	}
	return p, sc.Err()
}

func known(kind string) bool {
	for _, k := range Kinds {
		if k == kind {
			return true
		}
	}
	return false
}

// Load reads the policy in path; a host without the file has none
// (nil, no error).
func Load(path string) (Policy, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errdefs.ErrInvalidArgument, path, err)
	}
	return p, nil
}

func paramPath(dir, kind string) string {
	return filepath.Join(dir, "migros_"+kind+"_range")
}

// errNoRanges is the error of an rxe without MigrOS' ID ranges.
var errNoRanges = fmt.Errorf("%w: this host's rdma_rxe takes no ID ranges (is MigrOS' rxe with patch 0018 loaded?)",
	errdefs.ErrFailedPrecondition)

// Current is the policy in effect in the rxe module whose parameters are
// in dir (ParamsDir).
func Current(dir string) (Policy, error) {
	p := Policy{}
	for _, k := range Kinds {
		b, err := os.ReadFile(paramPath(dir, k))
		if errors.Is(err, os.ErrNotExist) {
			return nil, errNoRanges
		}
		if err != nil {
			return nil, err
		}
		r, err := parseRange(string(b))
		if err != nil {
			return nil, fmt.Errorf("rdma_rxe's %s range: %w", k, err)
		}
		p[k] = r
	}
	return p, nil
}

// Apply puts p in effect in the rxe module whose parameters are in dir:
// every kind's range, the whole range for kinds p lacks. A range the
// module refuses (outside the kind's indices) is an error.
func (p Policy) Apply(dir string) error {
	cur, err := Current(dir)
	if err != nil {
		return err
	}
	for _, k := range Kinds {
		if cur[k] == p[k] {
			continue
		}
		if err := os.WriteFile(paramPath(dir, k), []byte(p[k].param()), 0); err != nil {
			return fmt.Errorf("%w: setting rdma_rxe's %s range to %s: %w", errdefs.ErrInvalidArgument, k, p[k], err)
		}
	}
	return nil
}
