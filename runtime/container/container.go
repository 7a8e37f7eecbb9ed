// SPDX-License-Identifier: Apache-2.0

// Package container drives containerd for MigrOS: it restores a
// container's task from a task checkpoint (what `ctr task checkpoint`
// makes, with or without --exit), which ctr itself cannot do.
package container

import (
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// DefaultAddress is containerd's socket.
const DefaultAddress = "/run/containerd/containerd.sock"

// RestoreTask creates and starts the task of container id, whose task
// must not exist, from the task checkpoint image ref, in containerd
// namespace ns. The task's I/O goes nowhere: a restored process keeps the
// files it had. Under io.containerd.migros.v1 the restore rebuilds the
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
	task, err := c.NewTask(ctx, cio.NullIO, opts...)
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
