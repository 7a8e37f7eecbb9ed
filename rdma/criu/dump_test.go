// SPDX-License-Identifier: Apache-2.0

package criu

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Owner finds the other process that has the same open file, not another
// open of the same path.
func TestOwner(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "shared")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.Open(f.Name()) // same path, another open file
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	decoy := exec.Command("sleep", "30")
	decoy.ExtraFiles = []*os.File{other}
	holder := exec.Command("sleep", "30")
	holder.ExtraFiles = []*os.File{nil, f} // fd 4
	for _, c := range []*exec.Cmd{decoy, holder} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer c.Process.Kill()
	}
	pid, fd, err := Owner(f)
	if err != nil {
		t.Fatal(err)
	}
	if pid != holder.Process.Pid || fd != 4 {
		t.Fatalf("owner %d fd %d, want %d fd 4", pid, fd, holder.Process.Pid)
	}
	holder.Process.Kill()
	holder.Wait()
	decoy.Process.Kill()
	decoy.Wait()
	if _, _, err := Owner(f); err == nil || !strings.Contains(err.Error(), "no process has") {
		t.Fatalf("owner after the holder exited: %v", err)
	}
}

func TestMappings(t *testing.T) {
	ms, err := mappings(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	found := false
	for _, m := range ms {
		if m.end <= m.start {
			t.Errorf("bad mapping %+v", m)
		}
		found = found || m.path == exe
	}
	if !found {
		t.Errorf("the test binary %s is not among %d mappings", exe, len(ms))
	}
}
