// SPDX-License-Identifier: Apache-2.0

package idrange

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Policy
		err      string
	}{
		{name: "empty", in: "", want: Policy{}},
		{name: "all kinds", in: "# this host\nqpn = 0x1000-0x1fff\n\nmr=4096-8191\n  mw = \"0x11000-0x11fff\"\n",
			want: Policy{"qpn": {0x1000, 0x1fff}, "mr": {4096, 8191}, "mw": {0x11000, 0x11fff}}},
		{name: "one kind", in: "qpn = 0x100 - 0x1ff", want: Policy{"qpn": {0x100, 0x1ff}}},
		{name: "whole range", in: "qpn =", want: Policy{"qpn": {}}},
		{name: "single index", in: "mr = 7-7", want: Policy{"mr": {7, 7}}},
		{name: "unknown kind", in: "srq = 1-2", err: "line 1"},
		{name: "no value", in: "qpn", err: "line 1"},
		{name: "reversed", in: "qpn = 0x2000-0x1000", err: "MIN <= MAX"},
		{name: "zero", in: "mr = 0-10", err: "MIN <= MAX"},
		{name: "not a number", in: "\nqpn = a-b", err: "line 2"},
		{name: "too big", in: "qpn = 1-0x100000000", err: "out of range"},
		{name: "one number", in: "qpn = 0x1000", err: "MIN-MAX"},
		{name: "twice", in: "qpn = 1-2\nqpn = 3-4", err: "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse: %v, %v; want an error with %q", p, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(p) != len(tc.want) {
				t.Fatalf("policy %v, want %v", p, tc.want)
			}
			for k, r := range tc.want {
				if got, ok := p[k]; !ok || got != r {
					t.Errorf("%s: %v, want %v", k, got, r)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if p, err := Load(filepath.Join(dir, "ids.conf")); p != nil || err != nil {
		t.Fatalf("no file: %v, %v; want no policy", p, err)
	}
	path := filepath.Join(dir, "ids.conf")
	if err := os.WriteFile(path, []byte("qpn = x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), path) {
		t.Fatalf("bad file: %v", err)
	}
}

// params is a directory laid out as rdma_rxe's parameters, with the
// values the module prints.
func params(t *testing.T, values map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for k, v := range values {
		if err := os.WriteFile(paramPath(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestApply(t *testing.T) {
	dir := params(t, map[string]string{"qpn": "\n", "mr": "0x1-0x10\n", "mw": "\n"})
	cur, err := Current(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cur.String() != "qpn any, mr 0x1-0x10, mw any" {
		t.Fatalf("current %v", cur)
	}
	p := Policy{"qpn": {0x1000, 0x1fff}}
	if err := p.Apply(dir); err != nil {
		t.Fatal(err)
	}
	after, err := Current(dir)
	if err != nil {
		t.Fatal(err)
	}
	// What the policy lacks goes back to the whole range.
	if after.String() != "qpn 0x1000-0x1fff, mr any, mw any" {
		t.Fatalf("after Apply: %v", after)
	}
	if err := (Policy{}).Apply(t.TempDir()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("rxe without ranges: %v", err)
	}
}
