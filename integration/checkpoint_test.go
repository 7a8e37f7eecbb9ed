// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
)

// counterScript counts in shell memory and publishes "<token> <count>",
// where the token is drawn once when the process starts: a restored process
// keeps its token and its count, a restarted one would have neither.
const counterScript = `tok=$(cat /proc/sys/kernel/random/uuid); i=0
while :; do i=$((i+1)); echo "$tok $i" > /count.tmp; mv /count.tmp /count; sleep 0.1; done`

type count struct {
	token string
	n     int
}

func readCount(ctx context.Context, t *testing.T, g *lab.Guest, id string) count {
	t.Helper()
	execID := fmt.Sprintf("read-%d", time.Now().UnixNano())
	out, err := g.Output(ctx, "ctr", "task", "exec", "--exec-id", execID, id, "cat", "/count")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("unexpected counter output %q", out)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("unexpected counter output %q", out)
	}
	return count{f[0], n}
}

// A plain (non-RDMA) container is checkpointed and restored with ctr, runc
// and CRIU in a guest, and continues from where it was.
func TestCheckpointRestoreCounter(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	src := guest(t, "src")
	const id = "e2e-counter"
	const ref = "localhost/migros/checkpoint/e2e-counter:1"
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		src.RemoveContainer(ctx, id)
		_ = src.Run(ctx, "ctr", "images", "rm", ref)
	})
	run, err := src.RunArgv(ctx, lab.Container{ID: id, Detach: true}, "sh", "-c", counterScript)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(ctx, run...); err != nil {
		t.Fatal(err)
	}
	// Let it count for a while, so that a restart would be obvious.
	var before count
	for before.n < 20 {
		time.Sleep(time.Second)
		before = readCount(ctx, t, src, id)
	}

	if err := src.Run(ctx, "ctr", "container", "checkpoint", "--task", "--rw", id, ref); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	atCheckpoint := readCount(ctx, t, src, id) // ctr checkpoint leaves the task running
	if atCheckpoint.token != before.token || atCheckpoint.n < before.n {
		t.Fatalf("container disturbed by the checkpoint: %+v then %+v", before, atCheckpoint)
	}
	src.RemoveContainer(ctx, id)
	if out, err := src.Output(ctx, "ctr", "task", "list", "-q"); err != nil || strings.Contains(out, id) {
		t.Fatalf("task still present after removal: %q %v", out, err)
	}

	if err := src.Run(ctx, "ctr", "container", "restore", "--live", "--rw", id, ref); err != nil {
		t.Fatalf("restore: %v", err)
	}
	restored := readCount(ctx, t, src, id)
	if restored.token != before.token {
		t.Fatalf("restored process has token %s, the checkpointed one had %s: it restarted instead of restoring",
			restored.token, before.token)
	}
	if restored.n < before.n {
		t.Fatalf("counter went back from %d to %d", before.n, restored.n)
	}
	// And it keeps counting.
	time.Sleep(2 * time.Second)
	later := readCount(ctx, t, src, id)
	if later.token != before.token || later.n <= restored.n {
		t.Fatalf("restored counter does not advance: %+v then %+v", restored, later)
	}
	t.Logf("counter %d before checkpoint, %d right after restore, %d two seconds later", before.n, restored.n, later.n)
}
