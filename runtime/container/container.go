// SPDX-License-Identifier: Apache-2.0

// Package container drives containerd for MigrOS where ctr cannot: it
// checkpoints a container whole and stops it (a checkpoint to move it
// elsewhere), and restores a container's task from a task checkpoint
// (what `ctr task checkpoint` makes, with or without --exit).
package container

import (
	"context"
	"fmt"
	"io"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// DefaultAddress is containerd's socket.
const DefaultAddress = "/run/containerd/containerd.sock"

// RestoredIO is the stdio of a restored task: pipes, as ctr run -d
// gives a container, whose output is discarded (a restored process keeps
// the other files it had). Not cio.NullIO: that is the null device the
// shim opens in the host's mounts, which CRIU cannot find in the
// container, so the task's next checkpoint would fail.
func RestoredIO() cio.Creator {
	return cio.NewCreator(cio.WithStreams(strings.NewReader(""), io.Discard, io.Discard))
}

// RestoreTask creates and starts the task of container id, whose task
// must not exist, from the task checkpoint image ref, in containerd
// namespace ns, with RestoredIO. Under io.containerd.migros.v1 the restore rebuilds the
// RDMA state of the container's processes and resumes their QPs. CRIU
// works, and leaves its log, in workDir if not empty (else in the task's
// bundle, which a failed restore removes). It returns the task's pid.
func RestoreTask(ctx context.Context, address, ns, id, ref, workDir string) (uint32, error) {
	client, err := containerd.New(address)
	if err != nil {
		return 0, fmt.Errorf("containerd at %s: %w", address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, ns)
	c, err := client.LoadContainer(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("container %s: %w", id, err)
	}
	if _, err := c.Task(ctx, nil); err == nil {
		return 0, fmt.Errorf("container %s: %w: it has a task; delete it first", id, errdefs.ErrAlreadyExists)
	} else if !errdefs.IsNotFound(err) {
		return 0, fmt.Errorf("container %s: %w", id, err)
	}
	img, err := client.GetImage(ctx, ref)
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	opts := []containerd.NewTaskOpts{containerd.WithTaskCheckpoint(img)}
	if workDir != "" {
		opts = append(opts, containerd.WithRestoreWorkPath(workDir))
	}
	task, err := c.NewTask(ctx, RestoredIO(), opts...)
	if err != nil {
		return 0, fmt.Errorf("restoring container %s from %s: %w", id, ref, err)
	}
	if err := task.Start(ctx); err != nil {
		if _, derr := task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill); derr != nil {
			err = fmt.Errorf("%w (and removing the task: %v)", err, derr)
		}
		return 0, fmt.Errorf("restoring container %s from %s: %w", id, ref, err)
	}
	return task.Pid(), nil
}

// Checkpoint makes the container checkpoint ref of container id, in
// containerd namespace ns: its spec, runtime, rw layer and task (CRIU's
// images and, under io.containerd.migros.v1, the RDMA images), which `ctr
// container restore` restores and `ctr images export/import` move whole.
// With exit the task stops once dumped, its QPs left Stopped so that its
// peers wait for the restored container; without, it keeps running
// (ctr container checkpoint --task).
func Checkpoint(ctx context.Context, address, ns, id, ref string, exit bool) error {
	client, err := containerd.New(address)
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, ns)
	c, err := client.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	opts := []containerd.CheckpointOpts{containerd.WithCheckpointRuntime, containerd.WithCheckpointRW}
	if exit {
		// Before WithCheckpointTask, which sends the options.
		opts = append(opts, containerd.WithCheckpointTaskExit)
	}
	opts = append(opts, containerd.WithCheckpointTask)
	if _, err := c.Checkpoint(ctx, ref, opts...); err != nil {
		return fmt.Errorf("checkpoint of container %s: %w", id, err)
	}
	return nil
}
