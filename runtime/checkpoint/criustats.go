// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/migros/migros/rdma/criu"
)

// Times are what a CRIU run took, from its log (and, for a dump, its
// stats image).
type Times struct {
	// CRIU is the run, from its log's first line to its last.
	CRIU time.Duration
	// RDMA is the time inside MigrOS' plugin hooks: the RDMA dump or
	// restore (each hook runs the migros-criu helper).
	RDMA time.Duration
	// Memory is the memory dump: collecting the pages and writing them
	// (a dump's stats; 0 for a restore).
	Memory time.Duration
	// Resume is, in a restore's RDMA, the restored QPs resuming (each
	// tells its peers where it now is), as the plugin's helper logs it.
	Resume time.Duration
}

// logStamp is the time a CRIU log line begins with: "(SS.UUUUUU)".
var logStamp = regexp.MustCompile(`^\((\d+)\.(\d{6})\)`)

// pluginHook is how CRIU logs a call into MigrOS' plugin.
const pluginHook = "plugin: `migros' hook"

// LogTimes reads a CRIU log (dump.log, restore.log): the run's length
// and the time spent in MigrOS' plugin hooks, each hook lasting until
// the next line CRIU logs.
func LogTimes(r io.Reader) (Times, error) {
	var t Times
	var last time.Duration
	inHook, stamped := false, false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if _, rest, ok := strings.Cut(sc.Text(), criu.ResumedLog); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				us, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return Times{}, fmt.Errorf("CRIU log: %q: %w", sc.Text(), err)
				}
				t.Resume += time.Duration(us) * time.Microsecond
			}
			continue
		}
		m := logStamp.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		sec, _ := strconv.Atoi(m[1])
		us, _ := strconv.Atoi(m[2])
		at := time.Duration(sec)*time.Second + time.Duration(us)*time.Microsecond
		if inHook {
			t.RDMA += at - last
		}
		inHook = strings.Contains(sc.Text(), pluginHook)
		last, stamped = at, true
	}
	if err := sc.Err(); err != nil {
		return Times{}, err
	}
	if !stamped {
		return Times{}, errors.New("no time-stamped line in the CRIU log")
	}
	t.CRIU = last
	return t, nil
}

// CRIU image magics (criu/include/magic.h): an image begins with the
// common or the service magic, then its own.
const (
	imgCommonMagic  = 0x54564319
	imgServiceMagic = 0x55105940
	statsMagic      = 0x57093306
)

// DumpStatsTime is the memory dump's time from CRIU's stats-dump image:
// its memdump_time (stats.proto, microseconds), collecting the pages and
// writing them (to the images, or a page server). memwrite_time, the
// writing alone, runs inside it in a dump (CRIU's mem.c writes each
// chunk as it collects it): adding both counted the writing twice, which
// showed once the pages streamed slowly to a page server (a memory dump
// longer than the whole checkpoint).
func DumpStatsTime(b []byte) (time.Duration, error) {
	le := binary.LittleEndian
	if len(b) < 12 {
		return 0, errors.New("stats-dump: too short")
	}
	if m := le.Uint32(b); m != imgCommonMagic && m != imgServiceMagic {
		return 0, fmt.Errorf("stats-dump: magic %#x is not a CRIU image's", m)
	}
	if m := le.Uint32(b[4:]); m != statsMagic {
		return 0, fmt.Errorf("stats-dump: magic %#x, want %#x", m, statsMagic)
	}
	n := le.Uint32(b[8:])
	b = b[12:]
	if uint64(n) > uint64(len(b)) {
		return 0, fmt.Errorf("stats-dump: entry of %d bytes in %d", n, len(b))
	}
	// stats_entry: 1 dump (dump_stats_entry).
	dump, err := field(b[:n], 1)
	if err != nil || dump == nil {
		return 0, fmt.Errorf("stats-dump: no dump stats: %v", err)
	}
	var us uint64
	// dump_stats_entry: 3 memdump_time.
	for len(dump) > 0 {
		num, typ, l := protowire.ConsumeTag(dump)
		if l < 0 {
			return 0, fmt.Errorf("stats-dump: %w", protowire.ParseError(l))
		}
		dump = dump[l:]
		if typ == protowire.VarintType && num == 3 {
			v, l := protowire.ConsumeVarint(dump)
			if l < 0 {
				return 0, fmt.Errorf("stats-dump: %w", protowire.ParseError(l))
			}
			us += v
			dump = dump[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(num, typ, dump)
		if l < 0 {
			return 0, fmt.Errorf("stats-dump: %w", protowire.ParseError(l))
		}
		dump = dump[l:]
	}
	return time.Duration(us) * time.Microsecond, nil
}

// field is the bytes of length-delimited field num of message b, nil if
// it has none.
func field(b []byte, num protowire.Number) ([]byte, error) {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, protowire.ParseError(l)
		}
		b = b[l:]
		if n == num && typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return nil, protowire.ParseError(l)
			}
			return v, nil
		}
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			return nil, protowire.ParseError(l)
		}
		b = b[l:]
	}
	return nil, nil
}
