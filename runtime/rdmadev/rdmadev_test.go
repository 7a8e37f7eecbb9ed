// SPDX-License-Identifier: Apache-2.0

package rdmadev

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNodesWithoutRDMA(t *testing.T) {
	nodes, err := Host{Root: t.TempDir()}.Nodes()
	if err != nil || len(nodes) != 0 {
		t.Fatalf("a host without %s: %v, %v", Dir, nodes, err)
	}
}

func TestNodesSkipsNonDevices(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, Dir), 0o755); err != nil {
		t.Fatal(err)
	}
	// A regular file where a device node would be is not a device.
	if err := os.WriteFile(filepath.Join(root, Dir, "uverbs0"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	nodes, err := Host{Root: root}.Nodes()
	if err != nil || len(nodes) != 0 {
		t.Fatalf("nodes %v, %v; want none", nodes, err)
	}
}

func TestCDISpec(t *testing.T) {
	for _, tc := range []struct {
		name    string
		nodes   []Node
		devices []string // names, each with its nodes
		common  []string
		err     string
	}{
		{
			name: "two devices and rdma_cm",
			nodes: []Node{
				{Path: "/dev/infiniband/rdma_cm", Major: 10, Minor: 58},
				{Path: "/dev/infiniband/uverbs0", Major: 231, Minor: 192, IBDev: "rxe0"},
				{Path: "/dev/infiniband/uverbs1", Major: 231, Minor: 193, IBDev: "rxe1"},
			},
			devices: []string{"rxe0=/dev/infiniband/uverbs0", "rxe1=/dev/infiniband/uverbs1",
				"all=/dev/infiniband/uverbs0,/dev/infiniband/uverbs1"},
			common: []string{"/dev/infiniband/rdma_cm"},
		},
		{
			name:    "one device",
			nodes:   []Node{{Path: "/dev/infiniband/uverbs0", Major: 231, Minor: 192, IBDev: "rxe0"}},
			devices: []string{"rxe0=/dev/infiniband/uverbs0", "all=/dev/infiniband/uverbs0"},
		},
		{
			name:  "only rdma_cm",
			nodes: []Node{{Path: "/dev/infiniband/rdma_cm", Major: 10, Minor: 58}},
			err:   "no RDMA device",
		},
		{
			name:  "a device named all",
			nodes: []Node{{Path: "/dev/infiniband/uverbs0", Major: 231, Minor: 192, IBDev: "all"}},
			err:   "CDI name of all devices",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := CDISpec(tc.nodes)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.Kind != CDIKind || spec.Version == "" {
				t.Fatalf("kind %q version %q", spec.Kind, spec.Version)
			}
			var got []string
			for _, d := range spec.Devices {
				var paths []string
				for _, n := range d.ContainerEdits.DeviceNodes {
					paths = append(paths, n.Path)
				}
				got = append(got, d.Name+"="+strings.Join(paths, ","))
			}
			if strings.Join(got, " ") != strings.Join(tc.devices, " ") {
				t.Errorf("devices %v, want %v", got, tc.devices)
			}
			var common []string
			for _, n := range spec.ContainerEdits.DeviceNodes {
				common = append(common, n.Path)
			}
			if strings.Join(common, " ") != strings.Join(tc.common, " ") {
				t.Errorf("nodes for every device %v, want %v", common, tc.common)
			}
			if _, err := json.Marshal(spec); err != nil {
				t.Fatal(err)
			}
		})
	}
}
