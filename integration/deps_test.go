// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// make deps names a kernel version the mirror does not have, and lists the
// versions it does have.
func TestDepsReportsUnavailableKernel(t *testing.T) {
	cmd := exec.Command("bash", "../hack/deps.sh")
	cmd.Env = append(os.Environ(), "KERNEL_ABI=56", "KERNEL_DEB=6.1.0-nonexistent", "CACHE="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("deps.sh accepted a kernel version that does not exist:\n%s", out)
	}
	for _, want := range []string{
		"linux-headers-6.1.0-56-amd64=6.1.0-nonexistent is not available",
		"versions of linux-headers-6.1.0-56-amd64 offered: ",
		"kernel versions with image and source offered (pick one):",
		"make KERNEL_ABI=56 KERNEL_DEB=6.1.192-2",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
