// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSweep(t *testing.T) {
	now := time.Now()
	old, recent := now.Add(-25*time.Hour), now.Add(-time.Hour)
	root := t.TempDir()
	// name: the migration directory's own time, and its entries'.
	for _, tc := range []struct {
		name    string
		dir     time.Time
		entries map[string]time.Time
		gone    bool
	}{
		{"abandoned", old, map[string]time.Time{"pre-1": old, "pages": old}, true},
		{"empty-abandoned", old, nil, true},
		{"fresh", recent, map[string]time.Time{"pre-1": recent}, false},
		// The page server writes into pages/, not the directory above.
		{"receiving", old, map[string]time.Time{"pre-1": old, "pages": recent}, false},
		{"not.a.token!", old, nil, false},
	} {
		dir := filepath.Join(root, tc.name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for e, at := range tc.entries {
			if err := os.Mkdir(filepath.Join(dir, e), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(filepath.Join(dir, e), at, at); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chtimes(dir, tc.dir, tc.dir); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_, err := os.Stat(dir)
			if gone := os.IsNotExist(err); gone != tc.gone {
				t.Errorf("%s: removed %v, want %v (%v)", tc.name, gone, tc.gone, err)
			}
		}()
	}
	// A file is nobody's migration.
	if err := os.WriteFile(filepath.Join(root, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "file"), old, old); err != nil {
		t.Fatal(err)
	}
	removed, err := sweep(root, StaleAfter, now)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{"abandoned", "empty-abandoned"}; !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	if _, err := os.Stat(filepath.Join(root, "file")); err != nil {
		t.Errorf("the file: %v", err)
	}
	// No root yet: nothing to do.
	if removed, err := sweep(filepath.Join(root, "none"), StaleAfter, now); err != nil || removed != nil {
		t.Errorf("no root: %q, %v", removed, err)
	}
}
