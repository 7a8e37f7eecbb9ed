// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLogErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, log, want string
		missing         bool
	}{
		{name: "errors", log: "(00.1) fine\n(00.2) Error (criu/a.c:1): one\n  (00.3) Error (criu/b.c:2): two\n",
			want: "\ncriu errors (log: " + filepath.Join(dir, "errors") + "):\n(00.2) Error (criu/a.c:1): one\n(00.3) Error (criu/b.c:2): two"},
		{name: "none", log: "(00.1) fine\n(00.2) Dumping finished successfully\n"},
		{name: "missing", missing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			if !tc.missing {
				if err := os.WriteFile(path, []byte(tc.log), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got := LogErrors(path); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
