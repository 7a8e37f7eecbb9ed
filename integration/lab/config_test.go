// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Go and shell computations of the patch-series version must agree:
// the module reports the shell's, the tests expect the Go one.
func TestPatchSeriesVersionMatchesBuildScript(t *testing.T) {
	want, err := PatchSeriesVersion("../../kernel/patches")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "../../hack/build-rxe.sh", "version")
	cmd.Env = append(os.Environ(), "KERNEL_ABI=0", "KERNEL_DEB=0", "CACHE=/nonexistent", "OUT=/nonexistent")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("build-rxe.sh says %q, PatchSeriesVersion %q", got, want)
	}
}

func TestPatchSeriesVersionChangesWithPatches(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := PatchSeriesVersion(dir); err == nil {
		t.Fatal("no error for an empty series")
	}
	write("0001-a.patch", "a")
	v1, _ := PatchSeriesVersion(dir)
	write("0002-b.patch", "b")
	v2, _ := PatchSeriesVersion(dir)
	write("0001-a.patch", "A")
	v3, _ := PatchSeriesVersion(dir)
	if !strings.HasPrefix(v1, "1-") || !strings.HasPrefix(v2, "2-") || v2 == v3 {
		t.Fatalf("versions %q %q %q", v1, v2, v3)
	}
}

func TestConfigValidate(t *testing.T) {
	assets := Assets{}
	// Any existing absolute path satisfies the asset checks.
	for _, p := range []*string{&assets.Kernel, &assets.Initrd, &assets.Modules, &assets.RXE,
		&assets.Bin, &assets.GuestInit, &assets.Image} {
		*p = "/"
	}
	two := DefaultGuests()[:2]
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"default", Config{Name: "t1", Assets: assets, Guests: DefaultGuests()}, ""},
		{"no name", Config{Assets: assets, Guests: DefaultGuests()}, "name"},
		{"long name", Config{Name: "toolongname", Assets: assets, Guests: DefaultGuests()}, "name"},
		{"bad name", Config{Name: "a-b", Assets: assets, Guests: DefaultGuests()}, "only a-z"},
		{"no guests", Config{Name: "t1", Assets: assets}, "no guests"},
		{"duplicate guest", Config{Name: "t1", Assets: assets, Guests: append(DefaultGuests(), DefaultGuests()[0])}, "unique"},
		{"socket needs two", Config{Name: "t1", Assets: assets, Guests: DefaultGuests(), Net: NetSocket}, "exactly two"},
		{"socket with two", Config{Name: "t1", Assets: assets, Guests: two, Net: NetSocket}, ""},
		{"unknown net", Config{Name: "t1", Assets: assets, Guests: two, Net: "wifi"}, "unknown network"},
		{"relative asset", Config{Name: "t1", Assets: Assets{Kernel: "vmlinuz"}, Guests: two}, "absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatal(err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("want error containing %q, got %v", tt.wantErr, err)
			}
		})
	}
}

func TestQemuArgs(t *testing.T) {
	cfg := &Config{Name: "t1", Assets: Assets{RXE: "/x/rdma_rxe.ko"}, Guests: DefaultGuests()}
	g := newGuest(cfg, 0, cfg.Guests[0])
	args := strings.Join(g.qemuArgs(), " ")
	for _, want := range []string{"-name migros-lab:t1:src", "migros.rxe=/x/rdma_rxe.ko", "ifname=tap-src",
		"readonly=on", "name=org.migros.control", "mac=52:54:00:77:00:11"} {
		if !strings.Contains(args, want) {
			t.Errorf("QEMU arguments lack %q", want)
		}
	}
	stock := newGuest(cfg, 1, GuestSpec{Name: "dst", RXE: RXEStock})
	if !strings.Contains(strings.Join(stock.qemuArgs(), " "), "migros.rxe=stock") {
		t.Error("a stock guest does not ask for Debian's rdma_rxe")
	}
}
