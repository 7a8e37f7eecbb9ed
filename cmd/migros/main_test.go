// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/migros/migros/rdma"
)

// fakeContext is a process' RDMA context open on fd with QPs.
type fakeContext struct {
	fd  int
	qps []rdma.QPRef
}

func (c *fakeContext) QPs() ([]rdma.QPRef, error) { return c.qps, nil }

func TestSelectQP(t *testing.T) {
	// Two contexts, as rdmacheck -M has: the same handles in each.
	a := &fakeContext{fd: 3, qps: []rdma.QPRef{{Handle: 0, QPN: 0x11}, {Handle: 1, QPN: 0x12}}}
	b := &fakeContext{fd: 7, qps: []rdma.QPRef{{Handle: 0, QPN: 0x13}, {Handle: 1, QPN: 0x15}}}
	fdOf := func(c *fakeContext) int { return c.fd }
	for _, tc := range []struct {
		name   string
		ctxs   []*fakeContext
		fd     int
		handle int
		qpn    string
		want   []*fakeContext
		wantH  int
		err    string
	}{
		{name: "every QP of every context", ctxs: []*fakeContext{a, b}, fd: -1, handle: -1, want: []*fakeContext{a, b}, wantH: -1},
		{name: "one context by fd", ctxs: []*fakeContext{a, b}, fd: 7, handle: -1, want: []*fakeContext{b}, wantH: -1},
		{name: "a QP by number", ctxs: []*fakeContext{a, b}, fd: -1, handle: -1, qpn: "0x15", want: []*fakeContext{b}, wantH: 1},
		{name: "a QP by number, in decimal", ctxs: []*fakeContext{a, b}, fd: -1, handle: -1, qpn: "18", want: []*fakeContext{a}, wantH: 1},
		{name: "a handle in the only context", ctxs: []*fakeContext{a}, fd: -1, handle: 1, want: []*fakeContext{a}, wantH: 1},
		{name: "a handle in the context of fd", ctxs: []*fakeContext{a, b}, fd: 3, handle: 0, want: []*fakeContext{a}, wantH: 0},
		{name: "a handle, several contexts", ctxs: []*fakeContext{a, b}, fd: -1, handle: 1, err: "2 RDMA contexts"},
		{name: "no context on fd", ctxs: []*fakeContext{a, b}, fd: 5, handle: -1, err: "no RDMA context on fd 5"},
		{name: "no such QP", ctxs: []*fakeContext{a, b}, fd: -1, handle: -1, qpn: "0x99", err: "no QP 0x99"},
		{name: "a QP in another context than fd's", ctxs: []*fakeContext{a, b}, fd: 3, handle: -1, qpn: "0x15", err: "no QP 0x15"},
		{name: "not a number", ctxs: []*fakeContext{a}, fd: -1, handle: -1, qpn: "qp1", err: "not a QP number"},
		{name: "both --qp and --qpn", ctxs: []*fakeContext{a}, fd: -1, handle: 0, qpn: "0x11", err: "give one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, h, err := selectQP(tc.ctxs, fdOf, tc.fd, tc.handle, tc.qpn)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %d, %v; want an error with %q", got, h, err, tc.err)
				}
				return
			}
			if err != nil || h != tc.wantH || len(got) != len(tc.want) {
				t.Fatalf("got %v, %d, %v; want %v, %d", got, h, err, tc.want, tc.wantH)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("context %d: fd %d, want fd %d", i, got[i].fd, tc.want[i].fd)
				}
			}
		})
	}
	// A QP not found is rdma's own error.
	if _, _, err := selectQP([]*fakeContext{a}, fdOf, -1, -1, "0x99"); !errors.Is(err, rdma.ErrNoObject) {
		t.Errorf("no such QP: %v, want rdma.ErrNoObject", err)
	}
}
