// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/rdma"
)

// migros rxe check-ids tells which IDs a restore could take on a host: a
// QPN in use by a running program is taken, an unused one is free, one the
// device never gives out is out of range; any ID not free makes it fail.
func TestCheckIDs(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	pair := startRDMACheck(ctx, t, peer, src)
	qpn := listQPs(ctx, t, src, pidOf(ctx, t, src, "rdmacheck"))[0].QPN
	free := qpn + 1000

	out, err := src.Output(ctx, "migros", "rxe", "check-ids", fmt.Sprintf("qp:%#x", free), "ah:7")
	if err != nil {
		t.Fatalf("free IDs: %v\n%s", err, out)
	}
	for _, want := range []string{fmt.Sprintf("QPN %#x: free", free), "AH 0x7: free"} {
		if !strings.Contains(out, want) {
			t.Errorf("check-ids said %q, want %q", out, want)
		}
	}

	out, err = src.Output(ctx, "migros", "rxe", "check-ids", fmt.Sprintf("qp:%d", qpn), "qp:5", fmt.Sprintf("qp:%#x", free))
	if err == nil {
		t.Fatalf("check-ids of a QPN in use succeeded:\n%s", out)
	}
	for _, want := range []string{
		fmt.Sprintf("QPN %#x: ID already taken on this device", qpn),
		"QPN 0x5: ID out of the device's range",
		fmt.Sprintf("QPN %#x: free", free),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check-ids said %q, want %q", out, want)
		}
	}
	finishRDMACheck(t, pair)
}

// rdma/verbs' device tests, run on a guest's rxe device: objects created
// with chosen user_handles, and hints that give a QP and an MR exactly the
// QPN and keys asked for.
func TestVerbsOnDevice(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	src := guest(t, "src")
	out, err := src.Output(ctx, "env", "MIGROS_DEVICE=/dev/infiniband/uverbs0", "verbs.test", "-test.v", "-test.run", "Device")
	t.Log(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "--- PASS: TestDeviceHintedIDs") {
		t.Fatal("the device test did not run")
	}
}

// A host's ID range policy (/etc/migros/ids.conf) is put in effect by
// MigrOS' runtime before an RDMA container starts: the container's QP and
// MR get their QPN and key from the host's ranges, while the peer, with no
// policy, allocates as usual. A policy rxe refuses fails the container's
// creation with an error that names it.
func TestIDRangePolicy(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	src, peer := guest(t, "src"), guest(t, "peer")
	const id, conf = "e2e-ids", "/etc/migros/ids.conf"
	reset := "rm -f " + conf + "; for k in qpn mr mw; do echo > /sys/module/rdma_rxe/parameters/migros_${k}_range; done"
	t.Cleanup(func() {
		ctx := testContext(t, time.Minute)
		src.RemoveContainer(ctx, id)
		_ = src.Run(ctx, "sh", "-c", reset)
	})
	policy := func(p string) {
		t.Helper()
		if err := src.Run(ctx, "sh", "-c", "mkdir -p /etc/migros && printf '"+p+"' > "+conf); err != nil {
			t.Fatal(err)
		}
	}
	c := lab.Container{ID: id, Runtime: migrosRuntime, NetHost: true, Annotations: map[string]string{"io.migros.rdma": "true"}}

	// QPNs end at 0x20000: rxe refuses the range, the container is not created.
	policy(`qpn = 0x1000-0x7fffffff\n`)
	refused := c
	refused.Detach = true
	run, err := src.RunArgv(ctx, refused, "true")
	if err != nil {
		t.Fatal(err)
	}
	// (ctr's error, the shim's message in it, is in the error.)
	if out, err := src.Output(ctx, run...); err == nil || !strings.Contains(err.Error(), "ID range policy") ||
		!strings.Contains(err.Error(), "qpn range") {
		t.Fatalf("a container under a policy rxe refuses: %v\n%s", err, out)
	}
	src.RemoveContainer(ctx, id)

	policy(`# this host\nqpn = 0x5000-0x50ff\nmr = 0x500-0x5ff\n`)
	// The checks below look at both ends' QPs while they run: the traffic
	// (about 15 s) must outlast them on a slow guest.
	server, serverOut := serve(ctx, t, peer, "rdmacheck", "-n", rdmacheckMsgs, "-s", "4096")
	startInContainer(ctx, t, src, c, "rdmacheck", "-n", rdmacheckMsgs, "-s", "4096", "-w", "5000", peer.Addr())
	pid := pidOf(ctx, t, src, "rdmacheck")
	out, err := src.Output(ctx, "migros", "rxe", "dump", "--pid", pid)
	if err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	var dumps []rdma.ContextDump
	if err := json.Unmarshal([]byte(out), &dumps); err != nil || len(dumps) != 1 || len(dumps[0].QPs) == 0 || len(dumps[0].MRs) == 0 {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	for _, q := range dumps[0].QPs {
		if q.QPN < 0x5000 || q.QPN > 0x50ff {
			t.Errorf("QPN %#x outside the host's range 0x5000-0x50ff", q.QPN)
		}
	}
	for _, m := range dumps[0].MRs {
		if i := m.LKey >> 8; i < 0x500 || i > 0x5ff {
			t.Errorf("MR key %#x (index %#x) outside the host's range 0x500-0x5ff", m.LKey, i)
		}
	}
	for _, q := range listQPs(ctx, t, peer, pidOf(ctx, t, peer, "rdmacheck")) {
		if q.QPN >= 0x5000 && q.QPN <= 0x50ff {
			t.Errorf("the peer, without a policy, got QPN %#x in src's range", q.QPN)
		}
	}
	if out, err := src.Output(ctx, "migros", "ids"); err != nil || !strings.Contains(out, "rdma_rxe: qpn 0x5000-0x50ff, mr 0x500-0x5ff, mw any") {
		t.Errorf("migros ids: %v\n%s", err, out)
	}
	waitOK(t, "the peer", server, serverOut, 2*time.Minute)
	if !strings.Contains(serverOut.String(), "received "+rdmacheckMsgs+" messages of 4096 bytes, all in order and intact") {
		t.Fatalf("peer:\n%s", serverOut)
	}
}
