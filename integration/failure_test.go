// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
)

// A guest that does not boot fails lab.Up at once with its console, and
// the failed Up leaves nothing behind.
func TestGuestThatDoesNotBoot(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	a := theAssets
	a.GuestInit = "/bin/false" // init exits: the guest kernel panics
	spec := lab.DefaultGuests()[0]
	spec.MemoryMB = 512
	start := time.Now()
	_, err := lab.Up(ctx, lab.Config{Name: "nboot", Assets: a, Guests: []lab.GuestSpec{spec}})
	if err == nil {
		t.Fatal("lab.Up succeeded with a guest whose init exits")
	}
	for _, want := range []string{"QEMU exited", "console", "Attempted to kill init"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if d := time.Since(start); d > 2*time.Minute {
		t.Errorf("failure took %v to be noticed", d)
	}
	if left := lab.Leftovers("nboot"); len(left) > 0 {
		t.Fatalf("failed Up left behind: %v", left)
	}
}

// A lab whose creator was killed (SIGKILL, no cleanup) is removed by
// `migros-lab down`.
func TestTeardownAfterCrash(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	const name = "crash"
	cli := filepath.Join(theAssets.Bin, "migros-lab")
	cmd := exec.CommandContext(ctx, cli, "up", "--name", name, "--guests", "peer", "--assets", *assetsFlag)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill the creator once its guest is running.
	for len(lab.Leftovers(name)) < 2 {
		if ctx.Err() != nil {
			cmd.Process.Kill()
			t.Fatal("the crash lab never started its guest")
		}
		time.Sleep(200 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	t.Logf("after the crash: %v", lab.Leftovers(name))

	out, err := exec.CommandContext(ctx, cli, "down", "--name", name).CombinedOutput()
	if err != nil {
		t.Fatalf("migros-lab down: %v: %s", err, out)
	}
	if left := lab.Leftovers(name); len(left) > 0 {
		t.Fatalf("left behind after down: %v", left)
	}
	if _, err := os.Stat(filepath.Join(lab.DefaultStateRoot, name, "peer", "control.sock")); err == nil {
		t.Fatal("control socket left behind")
	}
}
