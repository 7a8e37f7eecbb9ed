// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Lab is a running set of guests.
type Lab struct {
	cfg    Config
	guests []*Guest
	mu     sync.Mutex
	// BootTimes holds each guest's time from QEMU start to "ready".
	BootTimes map[string]time.Duration
}

// Guests returns the lab's guests in configuration order.
func (l *Lab) Guests() []*Guest { return l.guests }

// Guest returns the guest called name, or nil.
func (l *Lab) Guest(name string) *Guest {
	for _, g := range l.guests {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// Config returns the lab's configuration.
func (l *Lab) Config() Config { return l.cfg }

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "lab[%s]: "+format+"\n", append([]any{c.Name}, args...)...)
	}
}

// BootTimeout bounds how long a guest may take from QEMU start to "ready".
// Emulated guests share two host cores; three boot in well under a minute.
const BootTimeout = 4 * time.Minute

// Up boots the lab's guests, first removing whatever a previous lab of the
// same name left behind. On failure everything it started is removed again
// and the error carries the failing guest's console.
func Up(ctx context.Context, cfg Config) (_ *Lab, retErr error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := Teardown(ctx, cfg.Name, cfg.StateRoot); err != nil {
		return nil, fmt.Errorf("lab: removing the previous lab: %w", err)
	}
	l := &Lab{cfg: cfg, BootTimes: map[string]time.Duration{}}
	defer func() {
		if retErr != nil {
			l.Down(context.WithoutCancel(ctx))
		}
	}()
	if err := os.MkdirAll(cfg.StateDir(), 0o755); err != nil {
		return nil, err
	}
	if err := l.saveState(); err != nil {
		return nil, err
	}
	if err := setupNetwork(ctx, &cfg); err != nil {
		return nil, err
	}
	for i, spec := range cfg.Guests {
		g := newGuest(&l.cfg, i, spec)
		l.guests = append(l.guests, g)
		if err := g.prepare(); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	for _, g := range l.guests {
		if err := g.launch(ctx); err != nil {
			return nil, err
		}
	}
	cfg.logf("%d guests started; waiting for them to boot", len(l.guests))
	err := l.each(ctx, func(ctx context.Context, g *Guest) error {
		bctx, cancel := context.WithTimeout(ctx, BootTimeout)
		defer cancel()
		if err := g.waitReady(bctx); err != nil {
			return g.failure(ctx, err)
		}
		l.mu.Lock()
		l.BootTimes[g.Name] = time.Since(start)
		l.mu.Unlock()
		cfg.logf("%s ready after %.1fs", g.Name, time.Since(start).Seconds())
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = l.each(ctx, func(ctx context.Context, g *Guest) error {
		if err := g.ImportImage(ctx, cfg.Assets.Image); err != nil {
			return g.failure(ctx, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	cfg.logf("up: %s", strings.Join(l.names(), ", "))
	return l, nil
}

// each runs fn on every guest in parallel and joins the errors.
func (l *Lab) each(ctx context.Context, fn func(context.Context, *Guest) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(l.guests))
	for i, g := range l.guests {
		wg.Go(func() {
			errs[i] = fn(ctx, g)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *Lab) names() []string {
	var n []string
	for _, g := range l.guests {
		n = append(n, g.Name)
	}
	return n
}

// Attach returns a lab that `Up` started in another process (make lab).
// Guests are connected to on first use.
func Attach(name, stateRoot string) (*Lab, error) {
	cfg := Config{Name: name, StateRoot: stateRoot}
	b, err := os.ReadFile(filepath.Join(cfg.StateDir(), "state.json"))
	if err != nil {
		return nil, fmt.Errorf("lab %s is not up: %w", name, err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("lab %s: bad state: %w", name, err)
	}
	cfg.StateRoot = stateRoot
	l := &Lab{cfg: cfg}
	for i, spec := range cfg.Guests {
		l.guests = append(l.guests, newGuest(&l.cfg, i, spec))
	}
	return l, nil
}

func (l *Lab) saveState() error {
	b, err := json.MarshalIndent(l.cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.cfg.StateDir(), "state.json"), b, 0o644)
}

// Close drops the control connections and leaves the guests running.
func (l *Lab) Close() {
	for _, g := range l.guests {
		g.closeControl()
	}
}

// Down stops every guest and removes the lab's network. Console logs stay
// in the state directory.
func (l *Lab) Down(ctx context.Context) error {
	l.Close()
	return Teardown(ctx, l.cfg.Name, l.cfg.StateRoot)
}

// Teardown removes every process, tap, bridge and namespace of the lab
// called name, whether or not its creator is still alive.
func Teardown(ctx context.Context, name, stateRoot string) error {
	cfg := Config{Name: name, StateRoot: stateRoot}
	var errs []error
	if err := killGuests(cfg.StateDir(), name); err != nil {
		errs = append(errs, err)
	}
	if err := removeNetwork(ctx, &cfg); err != nil {
		errs = append(errs, err)
	}
	// Sockets and the state file go; console logs stay for inspection.
	matches, _ := filepath.Glob(filepath.Join(cfg.StateDir(), "*", "*.sock"))
	for _, m := range matches {
		os.Remove(m)
	}
	os.Remove(filepath.Join(cfg.StateDir(), "state.json"))
	if left := Leftovers(name); len(left) > 0 {
		errs = append(errs, fmt.Errorf("lab %s: still present after teardown: %s", name, strings.Join(left, ", ")))
	}
	return errors.Join(errs...)
}

// Leftovers describes whatever of the lab called name still exists: QEMU
// processes and its network namespace (which holds its bridge and taps).
func Leftovers(name string) []string {
	var left []string
	for pid := range labProcesses(name) {
		left = append(left, fmt.Sprintf("QEMU process %d", pid))
	}
	if _, err := os.Stat(filepath.Join("/run/netns", (&Config{Name: name}).Netns())); err == nil {
		left = append(left, "network namespace "+(&Config{Name: name}).Netns())
	}
	return left
}

// TeardownAll removes every lab found on this machine: every migros-*
// namespace and every QEMU started by a lab.
func TeardownAll(ctx context.Context, stateRoot string) error {
	names := map[string]bool{}
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	if ents, err := os.ReadDir(stateRoot); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				names[e.Name()] = true
			}
		}
	}
	for _, n := range labNamespaces(ctx) {
		names[n] = true
	}
	for _, n := range labProcessNames() {
		names[n] = true
	}
	var errs []error
	for n := range names {
		if err := Teardown(ctx, n, stateRoot); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// run runs a host command and includes its output in the error.
func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
