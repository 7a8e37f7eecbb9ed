// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/perftest"
)

// Every guest runs our rdma_rxe, built from this repository's patches.
func TestModuleVersion(t *testing.T) {
	want, err := lab.PatchSeriesVersion("../kernel/patches")
	if err != nil {
		t.Fatal(err)
	}
	if theAssets.MigrosVersion != want {
		t.Fatalf("lab assets were built from patch series %q, the repository has %q: run make lab-assets",
			theAssets.MigrosVersion, want)
	}
	ctx := testContext(t, 2*time.Minute)
	for _, g := range theLab.Guests() {
		t.Run(g.Name, func(t *testing.T) {
			g := guest(t, g.Name)
			got, err := g.Output(ctx, "cat", "/sys/module/rdma_rxe/parameters/migros_version")
			if err != nil {
				t.Fatalf("no migros_version parameter: Debian's rdma_rxe is loaded, not ours: %v", err)
			}
			if strings.TrimSpace(got) != want {
				t.Fatalf("migros_version %q, want %q", strings.TrimSpace(got), want)
			}
			dmesg, err := g.Output(ctx, "dmesg")
			if err != nil {
				t.Fatal(err)
			}
			if loaded := "rdma_rxe: loaded (MigrOS " + want + ")"; !strings.Contains(dmesg, loaded) {
				t.Fatalf("dmesg lacks %q", loaded)
			}
			link, err := g.Output(ctx, "rdma", "link", "show", "rxe0/1")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(link, "state ACTIVE") || !strings.Contains(link, "netdev eth0") {
				t.Fatalf("rxe0 is not active on eth0: %s", link)
			}
		})
	}
}

// Unmodified perftest and ibv_rc_pingpong between src and peer.
func TestPerftest(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const iters = 300
	n := fmt.Sprint(iters)
	tests := []struct {
		name  string
		argv  []string
		check func(t *testing.T, out string)
	}{
		{"ib_send_bw", []string{"ib_send_bw", "-n", n, "-s", "65536"}, checkBW(iters, 65536)},
		{"ib_write_bw", []string{"ib_write_bw", "-n", n, "-s", "65536"}, checkBW(iters, 65536)},
		{"ib_read_lat", []string{"ib_read_lat", "-n", n, "-s", "64"}, func(t *testing.T, out string) {
			r, err := perftest.ParseLat(out)
			if err != nil {
				t.Fatalf("%v in:\n%s", err, out)
			}
			if r.Iterations != iters || r.Bytes != 64 || !(r.Typical > 0) {
				t.Fatalf("unexpected result %+v", r)
			}
		}},
		// -c: the receiver checks every buffer's content.
		{"ibv_rc_pingpong", []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", n}, checkPingpong(iters)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := lab.RunPair(ctx, peer, tt.argv, src, append(tt.argv, peer.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, res.Client)
		})
	}
}

func checkBW(iters, size int) func(*testing.T, string) {
	return func(t *testing.T, out string) {
		r, err := perftest.ParseBW(out)
		if err != nil {
			t.Fatalf("%v in:\n%s", err, out)
		}
		if r.Iterations != iters || r.Bytes != size || !(r.AvgMBps > 0) {
			t.Fatalf("unexpected result %+v", r)
		}
	}
}

func checkPingpong(iters int) func(*testing.T, string) {
	return func(t *testing.T, out string) {
		r, err := perftest.ParsePingpong(out)
		if err != nil {
			t.Fatalf("%v in:\n%s", err, out)
		}
		if r.Iterations != iters || !(r.UsecPerIter > 0) {
			t.Fatalf("unexpected result %+v", r)
		}
	}
}

// A container started through containerd in src runs an RDMA program
// against peer, with its devices and an unlimited memlock limit: given by
// ctr (--device), by MigrOS' runtime for a container that asks for RDMA
// with an annotation, or by CDI name from the spec migros cdi writes.
func TestContainerRDMA(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    lab.Container
		cdi  bool // migros cdi writes the guest's CDI spec first
	}{
		{"devices from ctr", lab.Container{RDMA: true}, false},
		{"devices from the shim", lab.Container{Runtime: migrosRuntime, NetHost: true,
			Annotations: map[string]string{"io.migros.rdma": "true"}}, false},
		{"devices by CDI name", lab.Container{Runtime: migrosRuntime, NetHost: true,
			Devices: []string{"migros.io/rdma=rxe0"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 5*time.Minute)
			src, peer := guest(t, "src"), guest(t, "peer")
			const id = "e2e-rdma"
			t.Cleanup(func() { src.RemoveContainer(testContext(t, time.Minute), id) })
			if tc.cdi {
				const spec = "/var/run/cdi/migros.io-rdma.json"
				t.Cleanup(func() { _ = src.Run(testContext(t, time.Minute), "rm", "-f", spec) })
				if out, err := src.Output(ctx, "migros", "cdi"); err != nil || !strings.Contains(out, "migros.io/rdma=rxe0") {
					t.Fatalf("migros cdi: %v\n%s", err, out)
				}
			}
			const iters = 200
			pp := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", fmt.Sprint(iters)}
			tc.c.ID = id
			client, err := src.RunArgv(ctx, tc.c,
				"sh", "-c", `echo "memlock=$(ulimit -l)"; ls /dev/infiniband; exec "$@"`, "sh")
			if err != nil {
				t.Fatal(err)
			}
			client = append(append(client, pp...), peer.Addr())
			res, err := lab.RunPair(ctx, peer, pp, src, client)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(res.Client, "memlock=unlimited") {
				t.Fatalf("container memlock limit is not unlimited:\n%s", res.Client)
			}
			if !strings.Contains(res.Client, "uverbs0") {
				t.Fatalf("container does not see /dev/infiniband/uverbs0:\n%s", res.Client)
			}
			checkPingpong(iters)(t, res.Client)
			checkPingpong(iters)(t, res.Server)
		})
	}
}
