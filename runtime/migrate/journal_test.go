// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestJournal(t *testing.T) {
	root := t.TempDir()
	j := Journal{Address: "/run/containerd/containerd.sock", Namespace: "default", ID: "app", To: "hostB:7430",
		Checkpoint: "localhost/migros/migrate/app:1", Token: "app-1"}
	forget, err := writeJournal(root, j)
	if err != nil {
		t.Fatal(err)
	}
	js, err := readJournals(root)
	if err != nil || len(js) != 1 {
		t.Fatalf("read %+v, %v", js, err)
	}
	got := js[0]
	if got.PID != os.Getpid() || !got.alive() {
		t.Errorf("entry %+v: not this process, alive", got)
	}
	got.PID, got.Start = 0, 0
	if got != j {
		t.Errorf("read %+v, wrote %+v", got, j)
	}
	// Another process that got the PID is not the one that wrote it.
	if other := (Journal{PID: js[0].PID, Start: js[0].Start + 1}); other.alive() {
		t.Error("an entry of another start time is alive")
	}
	forget()
	if js, err := readJournals(root); err != nil || len(js) != 0 {
		t.Fatalf("after forget: %+v, %v", js, err)
	}

	// What does not belong is left out, and said.
	for name, content := range map[string]string{
		"default/bad.json":   "{",
		"default/other.json": `{"namespace":"default","id":"app"}`,
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	js, err = readJournals(root)
	if len(js) != 0 || err == nil || !strings.Contains(err.Error(), "bad.json") ||
		!strings.Contains(err.Error(), "names container default/app") {
		t.Fatalf("read %+v, %v", js, err)
	}
}

func TestJournalPath(t *testing.T) {
	for _, tc := range []struct {
		ns, id string
		ok     bool
	}{
		{"default", "app", true},
		{"k8s.io", "a-b_c.d", true},
		{"", "app", false},
		{"default", "", false},
		{"default", "../app", false},
		{"..", "app", false},
		{"default", ".hidden", false},
		{"a/b", "app", false},
	} {
		p, err := journalPath("/run/migros/migrate", tc.ns, tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("%q/%q: %q, %v", tc.ns, tc.id, p, err)
		}
	}
}

func TestParseStart(t *testing.T) {
	for _, tc := range []struct {
		stat  string
		start uint64
		err   bool
	}{
		{"1234 (migros) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 8 0 56789 1000 200 18446744073709551615", 56789, false},
		// The command may hold spaces and parentheses.
		{"1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 8 0 4242 1000", 4242, false},
		{"1234 (migros) S 1 1234", 0, true},
		{"1234 migros S", 0, true},
	} {
		got, err := parseStart([]byte(tc.stat))
		if (err != nil) != tc.err || got != tc.start {
			t.Errorf("%q: %d, %v; want %d (error %v)", tc.stat, got, err, tc.start, tc.err)
		}
	}
}
