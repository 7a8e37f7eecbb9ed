// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/rdma"
)

// startPingpong runs a long ibv_rc_pingpong between client and server and
// returns once they exchange messages.
func startPingpong(ctx context.Context, t *testing.T, server, client *lab.Guest, iters string) *lab.Pair {
	t.Helper()
	argv := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", iters}
	p, err := lab.StartPair(ctx, server, argv, client, append(argv, server.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	time.Sleep(3 * time.Second)
	return p
}

// Bad control calls return clear errors and change nothing.
func TestControlErrors(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	// It must outlast the calls below, several commands each.
	iters := scaled(t, 2500)
	pp := startPingpong(ctx, t, peer, src, fmt.Sprint(iters))
	pid := pidOf(ctx, t, src, "ibv_rc_pingpong")
	before := listQPs(ctx, t, src, pid)

	tests := []struct {
		name string
		argv []string
		want string // in the error output
	}{
		{"unknown handle", []string{"migros", "rxe", "stop", "--pid", pid, "--qp", "999"}, rdma.ErrNoObject.Error()},
		{"resume a QP that is not stopped", []string{"migros", "rxe", "resume", "--pid", pid, "--qp", itoa(before[0].Handle)}, rdma.ErrState.Error()},
		// Every capability but CAP_SYS_ADMIN: pidfd_getfd still works,
		// the driver refuses.
		{"no CAP_SYS_ADMIN", []string{"setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
			"migros", "rxe", "stop", "--pid", pid}, rdma.ErrPermission.Error()},
		{"not a process with RDMA", []string{"migros", "rxe", "stop", "--pid", "1"}, "has no uverbs device open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := src.Output(ctx, tt.argv...)
			if err == nil {
				t.Fatalf("succeeded: %s", out)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error does not say %q: %v", tt.want, err)
			}
			for _, q := range listQPs(ctx, t, src, pid) {
				if q.Mig != rdma.MigNone {
					t.Fatalf("QP %#x changed to %s", q.QPN, q.Mig)
				}
			}
		})
	}
	if err := pp.Client.Wait(); err != nil {
		t.Fatalf("traffic disturbed by the bad calls: %v\n%s", err, pp.ClientOut)
	}
	checkPingpong(iters)(t, pp.ClientOut.String())
}

func itoa(v uint32) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
		if v == 0 {
			return string(b)
		}
	}
}

// A guest with Debian's stock rdma_rxe and one with ours interoperate in
// normal operation, both ways; the control interface says clearly that the
// stock module does not have it.
func TestInteropWithStockRXE(t *testing.T) {
	ctx := testContext(t, 10*time.Minute)
	guests := []lab.GuestSpec{lab.DefaultGuests()[0], lab.DefaultGuests()[2]}
	guests[1].RXE = lab.RXEStock
	l, err := lab.Up(ctx, lab.Config{Name: "interop", Assets: theAssets, Guests: guests})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down(context.Background())
	ours, stock := l.Guest("src"), l.Guest("peer")
	t.Cleanup(func() {
		keepLogs(t, ours)
		keepLogs(t, stock)
	})

	if _, err := stock.Output(ctx, "cat", "/sys/module/rdma_rxe/parameters/migros_version"); err == nil {
		t.Fatal("the stock guest runs our rdma_rxe")
	}
	if v, err := ours.Output(ctx, "cat", "/sys/module/rdma_rxe/parameters/migros_version"); err != nil || strings.TrimSpace(v) != theAssets.MigrosVersion {
		t.Fatalf("our guest: migros_version %q, %v", v, err)
	}

	for _, dir := range []struct {
		name           string
		server, client *lab.Guest
	}{
		{"ours to stock", stock, ours}, {"stock to ours", ours, stock},
	} {
		for _, tool := range []string{"ib_send_bw", "ib_write_bw", "ib_read_bw"} {
			t.Run(dir.name+"/"+tool, func(t *testing.T) {
				argv := []string{tool, "-n", "300", "-s", "65536"}
				res, err := lab.RunPair(ctx, dir.server, argv, dir.client, append(argv, dir.server.Addr()))
				if err != nil {
					t.Fatal(err)
				}
				checkBW(300, 65536)(t, res.Client)
			})
		}
		t.Run(dir.name+"/ibv_rc_pingpong", func(t *testing.T) {
			pp := []string{"ibv_rc_pingpong", "-g", "1", "-c", "-n", "200"}
			res, err := lab.RunPair(ctx, dir.server, pp, dir.client, append(pp, dir.server.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			checkPingpong(200)(t, res.Client)
		})
	}

	t.Run("control on the stock module", func(t *testing.T) {
		// Killed at the end: it must outlast the start and the stop on
		// any machine (2000 exchanges were over in 3 s on a fast one).
		startPingpong(ctx, t, ours, stock, "1000000")
		pid := pidOf(ctx, t, stock, "ibv_rc_pingpong")
		_, err := stock.Output(ctx, "migros", "rxe", "stop", "--pid", pid)
		if err == nil || !strings.Contains(err.Error(), rdma.ErrNotSupported.Error()) {
			t.Fatalf("stop on Debian's rdma_rxe: %v", err)
		}
	})
}

// With the watchdog set, a pause that outlasts it fails the peer's work with
// RETRY_EXC_ERR instead of waiting forever.
func TestPauseWatchdog(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const param = "/sys/module/rdma_rxe/parameters/migros_pause_timeout_ms"
	if err := peer.Run(ctx, "sh", "-c", "echo 5000 > "+param); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Run(context.Background(), "sh", "-c", "echo 0 > "+param) })
	before := counters(ctx, t, peer)

	argv := []string{"ib_write_bw", "-n", "5000", "-s", "65536"}
	pair, err := lab.StartPair(ctx, src, argv, peer, append(argv, src.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Kill()
	client, cout := pair.Client, pair.ClientOut
	time.Sleep(4 * time.Second)
	pid := pidOf(ctx, t, src, "ib_write_bw")
	stopQPs(ctx, t, src, pid)
	stopped := time.Now()
	select {
	case <-client.Done():
	case <-time.After(90 * time.Second):
		t.Fatalf("peer still waiting %v after the stop with a 5 s watchdog:\n%s", time.Since(stopped), cout.String())
	}
	if err := client.Wait(); err == nil {
		t.Fatalf("peer's transfer succeeded although its peer stayed stopped:\n%s", cout.String())
	}
	if d := time.Since(stopped); d < 4*time.Second {
		t.Fatalf("peer failed %v after the stop, before the 5 s watchdog", d)
	}
	if got := delta(counters(ctx, t, peer), before, "mig_pause_timeout"); got < 1 {
		t.Fatalf("mig_pause_timeout rose by %d", got)
	}
	t.Logf("peer failed %.1fs after the stop: %s", time.Since(stopped).Seconds(), lastLine(cout.String()))
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
