// SPDX-License-Identifier: Apache-2.0

//go:build e2e

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
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
