// SPDX-License-Identifier: Apache-2.0

// Command containerd-shim-migros-v1 is the shim of containerd runtime
// io.containerd.migros.v1: containerd's runc shim, whose checkpoint and
// restore also carry the RDMA state of the container (package shim).
package main

import (
	"context"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/migros/migros/runtime/install"
	"github.com/migros/migros/shim"
)

// Runtime is the containerd runtime this shim serves.
const Runtime = "io.containerd.migros.v1"

func init() {
	// The task service: runc's, wrapped. runc's own registration (its
	// task/plugin package) is not imported: the IDs would collide.
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			inner, err := task.NewTaskService(ic.Context, pp.(cshim.Publisher), ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			return shim.New(inner, install.Beside()), nil
		},
	})
}

func main() {
	cshim.RunShim(context.Background(), manager.NewShimManager(Runtime))
}
