// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/migros/migros/runtime/checkpoint"
)

// Parts of phases, which the report lists after the phase they are in.
const (
	PartCRIUDump    = "criu dump"    // CRIU's run, in checkpoint
	PartRDMADump    = "rdma dump"    // MigrOS' plugin, in CRIU's run
	PartMemoryDump  = "memory dump"  // the pages, in CRIU's run
	PartCRIURestore = "criu restore" // CRIU's run, in restore
	PartRDMARestore = "rdma restore" // rebuilding the RDMA objects and resuming the QPs, in CRIU's run
	PartResume      = "resume"       // the restored QPs resuming (telling their peers), in rdma restore
)

// dumpTimes reads where checkpoint img's dump went from CRIU's log and
// stats in it (the shim has CRIU write its log there).
func dumpTimes(ctx context.Context, client *containerd.Client, img containerd.Image) (checkpoint.Times, error) {
	store := client.ContentStore()
	b, err := content.ReadBlob(ctx, store, img.Target())
	if err != nil {
		return checkpoint.Times{}, err
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return checkpoint.Times{}, fmt.Errorf("checkpoint index: %w", err)
	}
	for _, m := range index.Manifests {
		if m.MediaType != images.MediaTypeContainerd1Checkpoint {
			continue
		}
		ra, err := store.ReaderAt(ctx, m)
		if err != nil {
			return checkpoint.Times{}, err
		}
		defer ra.Close()
		return criuTimes(tar.NewReader(content.NewReader(ra)))
	}
	return checkpoint.Times{}, errors.New("no CRIU images in the checkpoint")
}

// criuTimes reads dump.log and stats-dump from a CRIU images tar.
func criuTimes(tr *tar.Reader) (checkpoint.Times, error) {
	var t checkpoint.Times
	var sawLog bool
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return t, err
		}
		switch path.Clean(h.Name) {
		case "dump.log":
			mem := t.Memory
			if t, err = checkpoint.LogTimes(tr); err != nil {
				return t, fmt.Errorf("dump.log: %w", err)
			}
			t.Memory, sawLog = mem, true
		case "stats-dump":
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				return t, err
			}
			if t.Memory, err = checkpoint.DumpStatsTime(b); err != nil {
				return t, err
			}
		}
	}
	if !sawLog {
		return t, errors.New("no CRIU log in the checkpoint")
	}
	return t, nil
}

// restoreTimes reads CRIU's restore log of container id, which the runc
// shim keeps in the task's work directory under containerd's state
// directory.
func restoreTimes(state, namespace, id string) (checkpoint.Times, error) {
	f, err := os.Open(filepath.Join(state, "io.containerd.runtime.v2.task", namespace, id, "work", "restore.log"))
	if err != nil {
		return checkpoint.Times{}, err
	}
	defer f.Close()
	return checkpoint.LogTimes(f)
}
