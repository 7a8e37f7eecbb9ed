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

// A plain (non-RDMA) container is run, paused, resumed, exec'd into,
// checkpointed and restored with ctr, runc and CRIU in a guest, and
// continues from where it was: under the runc runtime, and the same under
// MigrOS' (io.containerd.migros.v1), which wraps it.
func TestCheckpointRestoreCounter(t *testing.T) {
	for _, tc := range []struct{ name, runtime string }{
		{"runc", ""},
		{"migros", migrosRuntime},
	} {
		t.Run(tc.name, func(t *testing.T) { counterLifecycle(t, tc.runtime) })
	}
}

// migrosRuntime is MigrOS' containerd runtime (containerd-shim-migros-v1).
const migrosRuntime = "io.containerd.migros.v1"

func counterLifecycle(t *testing.T, runtime string) {
	ctx := testContext(t, 10*time.Minute)
	src := guest(t, "src")
	const id = "e2e-counter"
	const ref = "localhost/migros/checkpoint/e2e-counter:1"
	t.Cleanup(func() {
		ctx := testContext(t, 2*time.Minute)
		src.RemoveContainer(ctx, id)
		_ = src.Run(ctx, "ctr", "images", "rm", ref)
	})
	run, err := src.RunArgv(ctx, lab.Container{ID: id, Detach: true, Runtime: runtime}, "sh", "-c", counterScript)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(ctx, run...); err != nil {
		t.Fatal(err)
	}
	if rt := taskRuntime(ctx, t, src, id); runtime != "" && rt != runtime {
		t.Fatalf("container runs under %q, not %q", rt, runtime)
	}
	// Let it count for a while, so that a restart would be obvious.
	var before count
	for before.n < 20 {
		time.Sleep(time.Second)
		before = readCount(ctx, t, src, id)
	}

	// Paused, it is reported so; resumed, it counts on.
	if err := src.Run(ctx, "ctr", "task", "pause", id); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st := taskStatus(ctx, t, src, id); st != "PAUSED" {
		t.Fatalf("paused task is %s", st)
	}
	if err := src.Run(ctx, "ctr", "task", "resume", id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st := taskStatus(ctx, t, src, id); st != "RUNNING" {
		t.Fatalf("resumed task is %s", st)
	}
	time.Sleep(time.Second)
	if c := readCount(ctx, t, src, id); c.token != before.token || c.n <= before.n {
		t.Fatalf("counter after pause and resume: %+v, before %+v", c, before)
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
	if rt := taskRuntime(ctx, t, src, id); runtime != "" && rt != runtime {
		t.Fatalf("restored container runs under %q, not %q", rt, runtime)
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

	// Killed, it is reported stopped, and deleted, gone.
	if err := src.Run(ctx, "ctr", "task", "kill", "-s", "SIGKILL", id); err != nil {
		t.Fatalf("kill: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for taskStatus(ctx, t, src, id) != "STOPPED" {
		if time.Now().After(deadline) {
			t.Fatalf("killed task is still %s", taskStatus(ctx, t, src, id))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := src.Run(ctx, "ctr", "task", "delete", id); err != nil {
		t.Fatalf("task delete: %v", err)
	}
	if err := src.Run(ctx, "ctr", "container", "delete", id); err != nil {
		t.Fatalf("container delete: %v", err)
	}
	if out, err := src.Output(ctx, "ctr", "container", "list", "-q"); err != nil || strings.Contains(out, id) {
		t.Fatalf("container still listed after delete: %q %v", out, err)
	}
}

// taskStatus is what ctr task list says of task id.
func taskStatus(ctx context.Context, t testing.TB, g *lab.Guest, id string) string {
	t.Helper()
	return ctrColumn(ctx, t, g, "task", id)
}

// taskRuntime is the runtime containerd runs container id under.
func taskRuntime(ctx context.Context, t *testing.T, g *lab.Guest, id string) string {
	t.Helper()
	return ctrColumn(ctx, t, g, "container", id)
}

// ctrColumn is the third column of id's row in ctr KIND list (a task's
// status, a container's runtime).
func ctrColumn(ctx context.Context, t testing.TB, g *lab.Guest, kind, id string) string {
	t.Helper()
	out, err := g.Output(ctx, "ctr", kind, "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	t.Fatalf("%s %s not listed:\n%s", kind, id, out)
	return ""
}
