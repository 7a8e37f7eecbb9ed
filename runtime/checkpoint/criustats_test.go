// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestLogTimes(t *testing.T) {
	for _, tc := range []struct {
		name, log          string
		criu, rdma, resume time.Duration
		bad                bool
	}{
		{name: "two hooks", log: `(00.000010) Version: 3.17.1
(00.100000) Dumping pages
(00.200000) plugin: ` + "`migros'" + ` hook 0 -> 0x7f
(00.250000) 	Dumping fd 5
(00.300000) plugin: ` + "`migros'" + ` hook 0 -> 0x7f
(00.310000) Dumping done
no stamp here
(01.500000) Writing stats`, criu: 1500 * time.Millisecond, rdma: 60 * time.Millisecond},
		{name: "no hook", log: "(00.000001) start\n(00.020000) end\n", criu: 20 * time.Millisecond},
		// The helper's lines in a restore's log, one per process.
		{name: "resumed", log: `(00.000010) Version: 3.17.1
(00.100000) plugin: ` + "`migros'" + ` hook 0 -> 0x7f
migros-criu: QPs resumed, us: 1500 (process 7)
migros-criu: QPs resumed, us: 250 (process 8)
(00.400000) Restore finished successfully`, criu: 400 * time.Millisecond, rdma: 300 * time.Millisecond,
			resume: 1750 * time.Microsecond},
		{name: "resumed, garbled", log: "(00.000001) start\nmigros-criu: QPs resumed, us: x\n", bad: true},
		{name: "no stamps", log: "hello\n", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LogTimes(strings.NewReader(tc.log))
			if (err != nil) != tc.bad {
				t.Fatalf("error %v", err)
			}
			if got.CRIU != tc.criu || got.RDMA != tc.rdma || got.Resume != tc.resume {
				t.Fatalf("%+v, want CRIU %v, RDMA %v, resume %v", got, tc.criu, tc.rdma, tc.resume)
			}
		})
	}
}

// statsImage is a stats-dump image with memdump and memwrite times (µs).
func statsImage(magic uint32, memdump, memwrite uint64) []byte {
	var dump []byte
	for _, f := range []struct {
		n protowire.Number
		v uint64
	}{{1, 7}, {2, 900}, {3, memdump}, {4, memwrite}, {5, 1000}, {7, 12}} {
		dump = protowire.AppendTag(dump, f.n, protowire.VarintType)
		dump = protowire.AppendVarint(dump, f.v)
	}
	entry := protowire.AppendTag(nil, 1, protowire.BytesType)
	entry = protowire.AppendBytes(entry, dump)
	b := binary.LittleEndian.AppendUint32(nil, magic)
	b = binary.LittleEndian.AppendUint32(b, statsMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entry)))
	return append(b, entry...)
}

func TestDumpStatsTime(t *testing.T) {
	good := statsImage(imgServiceMagic, 1500, 2500)
	for _, tc := range []struct {
		name string
		img  []byte
		want time.Duration
		bad  string
	}{
		// memwrite_time is inside memdump_time.
		{name: "service image", img: good, want: 1500 * time.Microsecond},
		{name: "common image", img: statsImage(imgCommonMagic, 10, 0), want: 10 * time.Microsecond},
		{name: "short", img: good[:6], bad: "too short"},
		{name: "not CRIU's", img: append([]byte("MGRSRDMA"), good[8:]...), bad: "magic"},
		{name: "entry cut", img: good[:len(good)-3], bad: "entry of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DumpStatsTime(tc.img)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("error %v, want one with %q", err, tc.bad)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("%v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
