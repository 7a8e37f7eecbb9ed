// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/image"
)

func TestTree(t *testing.T) {
	sh := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sh.Process.Kill(); sh.Wait() }()
	var got []int
	for i := 0; i < 50 && len(got) < 3; i++ {
		got = tree(sh.Process.Pid)
		if len(got) < 3 {
			exec.Command("sleep", "0.1").Run()
		}
	}
	if len(got) != 3 || got[0] != sh.Process.Pid {
		t.Fatalf("tree of sh with two children: %v", got)
	}
	if len(tree(1<<22+1)) != 1 {
		t.Error("a process that does not exist has descendants")
	}
}

// A process without uverbs files, or one that exited since the tree was
// listed, has no QP to refuse.
func TestRestorableQPsWithoutRDMA(t *testing.T) {
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		pid  int
	}{
		{"this process", os.Getpid()},
		{"an exited process", done.Process.Pid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := restorableQPs(tc.pid); err != nil {
				t.Error(err)
			}
		})
	}
	if err := Refusals(os.Getpid()); err != nil {
		t.Errorf("refusals for this process: %v", err)
	}
}

func TestImages(t *testing.T) {
	dir := t.TempDir()
	good, err := image.Encode(&image.Context{PID: 7, Objects: &rdma.ContextDump{PDs: []uint32{0}}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(image.FileName(29), good)
	write("rdma-event-30.img", nil) // a marker, not an image
	write("pages-1.img", []byte("CRIU's"))
	imgs, err := Images(dir)
	if err != nil || len(imgs) != 1 || imgs[29].PID != 7 {
		t.Fatalf("images %v, %v", imgs, err)
	}
	write(image.FileName(31), good[:len(good)-1])
	if _, err := Images(dir); !errors.Is(err, image.ErrCorrupt) {
		t.Fatalf("truncated image: %v", err)
	}
}
