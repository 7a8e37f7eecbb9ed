// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// digestTrailer carries the CRC-32C of a restore's (or a pre-dump's)
// body, which the destination checks before it restores anything. TLS
// guards the stream on the wire and containerd checks the digest of each
// blob it imports; this covers the whole stream, end to end, cheaply
// (SHA-256 of the stream took 4 s per 64 MiB on each side in the lab).
const digestTrailer = "Migros-Stream-Crc32c"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// stream is a checkpoint as it crosses between agents: it counts and
// hashes what passes, can be held to a rate, and knows whether it was
// read to its end.
type stream struct {
	r     io.Reader
	h     hash.Hash
	n     atomic.Int64
	eof   atomic.Bool
	limit int64 // bytes per second, 0 for no limit
	start time.Time
	// corruptAt is the offset of a byte flipped on its way (fault
	// injection, see faultFromEnv), -1 for none.
	corruptAt int64
}

func newStream(r io.Reader, limit int64) *stream {
	return &stream{r: r, h: crc32.New(castagnoli), limit: limit, start: time.Now(), corruptAt: -1}
}

func (s *stream) Read(p []byte) (int, error) {
	if s.limit > 0 {
		// Small reads keep the pace even.
		if max := s.limit / 10; max > 0 && int64(len(p)) > max {
			p = p[:max]
		}
	}
	n, err := s.r.Read(p)
	// The digest is of what was meant to pass: an injected corruption
	// is one the receiver must find.
	s.h.Write(p[:n])
	if c := s.corruptAt - s.n.Load(); c >= 0 && c < int64(n) {
		p[c] ^= 0xff
	}
	total := s.n.Add(int64(n))
	if errors.Is(err, io.EOF) {
		s.eof.Store(true)
	}
	if s.limit > 0 {
		due := time.Duration(float64(total) / float64(s.limit) * float64(time.Second))
		if wait := due - time.Since(s.start); wait > 0 {
			time.Sleep(wait)
		}
	}
	return n, err
}

// sent is how many bytes passed so far.
func (s *stream) sent() int64 { return s.n.Load() }

// whole says the stream was read to its end.
func (s *stream) whole() bool { return s.eof.Load() }

// digest is the CRC-32C of what passed, in hex.
func (s *stream) digest() string { return hex.EncodeToString(s.h.Sum(nil)) }

// digestOnEOF puts the stream's digest in the trailer as the stream ends.
type digestOnEOF struct {
	*stream
	trailer http.Header
}

func (d *digestOnEOF) Read(p []byte) (int, error) {
	n, err := d.stream.Read(p)
	if errors.Is(err, io.EOF) {
		d.trailer.Set(digestTrailer, d.stream.digest())
	}
	return n, err
}

// checkDigest checks that what passed through s has the digest trailer
// says the source sent.
func checkDigest(trailer http.Header, s *stream) error {
	if want, got := trailer.Get(digestTrailer), s.digest(); want != got {
		return fmt.Errorf("%w: arrived corrupt: its digest is crc32c:%s, the source's %q (%d bytes)",
			errdefs.ErrDataLoss, got, "crc32c:"+want, s.sent())
	}
	return nil
}

// FaultEnv names faults to inject into migrations, for testing how they
// are survived (as CRIU_FAULT does for CRIU). "corrupt-stream@N" flips
// the byte at offset N of the checkpoint the source sends.
const FaultEnv = "MIGROS_FAULT"

// faultFromEnv is the offset to corrupt the stream at, -1 for none.
func faultFromEnv() (int64, error) {
	v := os.Getenv(FaultEnv)
	if v == "" {
		return -1, nil
	}
	off, ok := strings.CutPrefix(v, "corrupt-stream@")
	n, err := strconv.ParseInt(off, 10, 64)
	if !ok || err != nil || n < 0 {
		return -1, fmt.Errorf("%s=%q: want corrupt-stream@OFFSET", FaultEnv, v)
	}
	return n, nil
}

// readAheadStore reads blobs from a content store in reads of
// readAheadSize. The exporter reads 32 KiB at a time, each a round trip
// to containerd: a checkpoint came out at about 1.4 MiB/s in the lab.
type readAheadStore struct {
	content.InfoReaderProvider
}

const readAheadSize = 4 << 20

func (s readAheadStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ra, err := s.InfoReaderProvider.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	return &readAhead{ReaderAt: ra}, nil
}

// readAhead serves reads from one window of the blob, read whole.
type readAhead struct {
	content.ReaderAt
	buf []byte
	off int64 // of buf in the blob
}

func (r *readAhead) ReadAt(p []byte, off int64) (int, error) {
	if off < r.off || off >= r.off+int64(len(r.buf)) {
		if off >= r.Size() {
			return 0, io.EOF
		}
		if cap(r.buf) == 0 {
			r.buf = make([]byte, readAheadSize)
		}
		n, err := r.ReaderAt.ReadAt(r.buf[:cap(r.buf)], off)
		if n == 0 && err != nil {
			r.buf = r.buf[:0]
			return 0, err
		}
		r.buf, r.off = r.buf[:n], off
	}
	n := copy(p, r.buf[off-r.off:])
	if n < len(p) {
		// The rest is in the next window.
		m, err := r.ReadAt(p[n:], off+int64(n))
		return n + m, err
	}
	return n, nil
}
