// SPDX-License-Identifier: Apache-2.0

//go:build e2e

// Package integration holds MigrOS' end-to-end tests. They run in the QEMU
// lab (integration/lab) against real components: Debian's 6.1 kernel with
// our rdma_rxe, containerd, runc, CRIU and unmodified RDMA programs.
// Run them with `make e2e-test` (part of `make test`).
package integration

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
)

var (
	assetsFlag = flag.String("assets", "", "lab assets.json (make lab-assets)")
	labName    = flag.String("lab", "e2e", "name of the lab these tests boot")
	guestNames = flag.String("guests", "src,dst,peer", "guests of that lab")
	guestMemMB = flag.Int("guest-memory", 0, "memory of each guest in MiB (0: the default)")
	logsDir    = flag.String("logs", "", "where a failed test leaves its guests' logs (empty: in the test's output)")
)

// The lab all tests share, booted once by TestMain.
var (
	theLab    *lab.Lab
	theAssets lab.Assets
	// upTime is how long lab.Up took (boot, setup, image import).
	upTime time.Duration
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if *assetsFlag == "" {
		fmt.Fprintln(os.Stderr, "e2e: -assets is required; run make e2e-test")
		return 2
	}
	a, err := lab.LoadAssets(*assetsFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	theAssets = a
	guests, err := lab.GuestsNamed(strings.Split(*guestNames, ",")...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	for i := range guests {
		if *guestMemMB > 0 {
			guests[i].MemoryMB = *guestMemMB
		}
	}
	ctx := context.Background()
	start := time.Now()
	l, err := lab.Up(ctx, lab.Config{Name: *labName, Assets: a, Guests: guests, Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: lab did not come up:", err)
		return 1
	}
	upTime = time.Since(start)
	theLab = l
	defer func() {
		if err := l.Down(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: lab teardown:", err)
		}
	}()
	code := m.Run()
	// Whatever the tests checked, a kernel that warned is a failure.
	for _, g := range l.Guests() {
		out, err := g.Output(ctx, "dmesg")
		if w := warnings(out); err != nil || len(w) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: guest %s's kernel warned (%v):\n%s\n", g.Name, err, strings.Join(w, "\n"))
			code = 1
		}
	}
	return code
}

// warnings are the lines of a kernel log that report a warning, a bug or
// an oops.
func warnings(dmesg string) []string {
	var w []string
	for _, l := range strings.Split(dmesg, "\n") {
		if strings.Contains(l, "WARNING:") || strings.Contains(l, "BUG:") || strings.Contains(l, "Oops") {
			w = append(w, strings.TrimSpace(l))
		}
	}
	return w
}

// kernelWarnings are the warnings in g's kernel log so far.
func kernelWarnings(ctx context.Context, t testing.TB, g *lab.Guest) []string {
	t.Helper()
	out, err := g.Output(ctx, "dmesg")
	if err != nil {
		t.Fatal(err)
	}
	return warnings(out)
}

// guest returns the lab guest called name, failing the test if it is
// missing, and prints the guest's logs if the test fails.
func guest(t testing.TB, name string) *lab.Guest {
	t.Helper()
	g := theLab.Guest(name)
	if g == nil {
		t.Fatalf("lab has no guest %q", name)
	}
	t.Cleanup(func() { keepLogs(t, g) })
	return g
}

// keepLogs, if t failed, writes g's logs (console, kernel log,
// containerd's log) to a file under -logs and says where, with the
// kernel's warnings, in one line or a few: the test's own failure stays
// at the end of its output. Without -logs, it prints the logs.
func keepLogs(t testing.TB, g *lab.Guest) {
	t.Helper()
	if !t.Failed() {
		return
	}
	logs := g.Logs(context.Background())
	if *logsDir == "" {
		t.Log(logs)
		return
	}
	name := filepath.Join(*logsDir, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"."+g.Name+".log")
	err := os.MkdirAll(*logsDir, 0o755)
	if err == nil {
		err = os.WriteFile(name, []byte(logs), 0o644)
	}
	if err != nil {
		t.Logf("%s's logs (%v):\n%s", g.Name, err, logs)
		return
	}
	w := warnings(logs)
	t.Logf("%s's logs: %s (%d lines of kernel warnings)", g.Name, name, len(w))
	for _, l := range w[:min(len(w), 3)] {
		t.Logf("  %s", l)
	}
}

// testContext bounds one test's work in the lab.
func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
