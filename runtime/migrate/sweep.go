// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
)

// StaleAfter is how long a migration's directory under PreDumpRoot may
// go untouched before an agent removes it. A migration removes its own
// when it ends, on both hosts, and tells the destination when it fails;
// a source that dies (or loses the destination for good) mid-way leaves
// its pre-dumps and pages on the destination, which nothing else
// removes. No migration waits a day between two writes.
const StaleAfter = 24 * time.Hour

// Sweep removes the stale migration directories under PreDumpRoot now,
// then every interval until ctx ends.
func (d *Destination) Sweep(ctx context.Context, interval time.Duration) {
	periodically(ctx, interval, func() {
		removed, err := sweep(PreDumpRoot, StaleAfter, time.Now())
		for _, token := range removed {
			d.pages.forget(token)
			log.G(ctx).Infof("removed the stale migration directory %s", filepath.Join(PreDumpRoot, token))
		}
		if err != nil {
			log.G(ctx).WithError(err).Warn("removing stale migration directories")
		}
	})
}

// periodically runs f now, then every interval until ctx ends.
func periodically(ctx context.Context, interval time.Duration, f func()) {
	for {
		f()
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// sweep removes the directories under root that neither they nor what
// they hold directly was modified in the last staleAfter before now, and
// returns their names.
func sweep(root string, staleAfter time.Duration, now time.Time) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !validToken.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(root, e.Name())
		last, err := lastModified(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if now.Sub(last) < staleAfter {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// lastModified is the latest modification time of dir and of what it
// holds directly (a pre-dump or pages directory, written into as the
// page server receives them).
func lastModified(dir string) (time.Time, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return time.Time{}, err
	}
	last := st.ModTime()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return time.Time{}, err
	}
	for _, e := range entries {
		if i, err := e.Info(); err == nil && i.ModTime().After(last) {
			last = i.ModTime()
		}
	}
	return last, nil
}
