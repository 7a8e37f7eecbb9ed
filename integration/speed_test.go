// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/perftest"
)

// refUsecPerIter is how long an ibv_rc_pingpong exchange took in the lab
// the restore tests' exchange counts were sized on (about 4 ms, TCG on
// a slow host): a pingpong of those counts outlasts a checkpoint taken
// seconds into it there, and is over before it on a host several times
// faster.
const refUsecPerIter = 4000

// labSpeed is how many times faster than that this lab exchanges
// (never less than 1), measured once a run.
var labSpeed struct {
	once   sync.Once
	factor float64
}

// scaled is n exchanges (or messages) grown by labSpeed, so that they
// last as long here as they were sized to there.
func scaled(t *testing.T, n int) int {
	t.Helper()
	labSpeed.once.Do(func() {
		labSpeed.factor = 1
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// Not guest(): this test's logs are its own to keep.
		src, peer := theLab.Guest("src"), theLab.Guest("peer")
		argv := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", "1000"}
		res, err := lab.RunPair(ctx, peer, argv, src, append(argv, peer.Addr()))
		if err != nil {
			t.Logf("measuring the lab's speed: %v; counts as sized", err)
			return
		}
		p, err := perftest.ParsePingpong(res.Client)
		if err != nil || !(p.UsecPerIter > 0) {
			t.Logf("measuring the lab's speed: %v in %q; counts as sized", err, res.Client)
			return
		}
		labSpeed.factor = max(1, refUsecPerIter/p.UsecPerIter)
		t.Logf("lab speed: %.0f usec an exchange; exchange counts x%.1f", p.UsecPerIter, labSpeed.factor)
	})
	return int(float64(n) * labSpeed.factor)
}
