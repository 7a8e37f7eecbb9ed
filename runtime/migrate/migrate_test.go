// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/migros/migros/runtime/agent"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestSpecNetwork(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  specs.Spec
		netns string
		host  bool
	}{
		{"host network", specs.Spec{Linux: &specs.Linux{}}, "", true},
		{"no linux section", specs.Spec{}, "", true},
		{"its own", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}, "", false},
		{"named", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/app"}}}}, "app", false},
		{"named, /run", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.NetworkNamespace, Path: "/run/netns/app"}}}}, "app", false},
		{"another process'", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.NetworkNamespace, Path: "/proc/42/ns/net"}}}}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := specNetns(&tc.spec); got != tc.netns {
				t.Errorf("named namespace %q, want %q", got, tc.netns)
			}
			if got := hostNetwork(&tc.spec); got != tc.host {
				t.Errorf("host network %v, want %v", got, tc.host)
			}
		})
	}
}

// The agent's answers carry a failed phase to the source, and a bad
// request is refused as such.
func TestRoutes(t *testing.T) {
	d := &Destination{Address: "/nonexistent/containerd.sock", Namespace: "default"}
	for _, tc := range []struct {
		name, path, header, body string
		code                     int
		phase                    string
	}{
		{name: "preflight, not JSON", path: "/v1/preflight", body: "{", code: http.StatusBadRequest},
		{name: "restore without its request", path: "/v1/restore", body: "x", code: http.StatusBadRequest},
		// No containerd here: the restore fails before anything arrives.
		{name: "restore, no containerd", path: "/v1/restore", header: `{"id":"c"}`, body: "x",
			code: http.StatusInternalServerError, phase: PhaseTransfer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			for p, h := range d.Routes() {
				mux.HandleFunc(p, h)
			}
			req := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body))
			if tc.header != "" {
				req.Header.Set(requestHeader, tc.header)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.code, rec.Body)
			}
			if tc.phase != "" && !strings.Contains(rec.Body.String(), `"phase":"`+tc.phase+`"`) {
				t.Fatalf("answer %s, want phase %s", rec.Body, tc.phase)
			}
		})
	}
}

// A phase's error fails the report at that phase; the times add up.
func TestReportRun(t *testing.T) {
	rep := &Report{}
	var heard []string
	o := Options{Progress: func(p Progress) { heard = append(heard, p.String()) }}
	if err := rep.run(o, PhaseFreeze, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := rep.run(o, PhaseCheckpoint, func() error { return boom })
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "checkpoint: ") || rep.FailedPhase != PhaseCheckpoint {
		t.Fatalf("error %v, failed phase %q", err, rep.FailedPhase)
	}
	if len(rep.Phases) != 2 || strings.Join(heard, ",") != "freeze,checkpoint" {
		t.Fatalf("phases %+v, heard %v", rep.Phases, heard)
	}
}

func TestProgressString(t *testing.T) {
	for _, tc := range []struct {
		p    Progress
		want string
	}{
		{Progress{Phase: PhaseFreeze}, "freeze"},
		{Progress{Phase: PhaseTransfer, Bytes: 3 << 20, Rate: 1.5 * (1 << 20)}, "transfer: 3.0 MiB sent, 1.5 MiB/s"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.p, got, tc.want)
		}
	}
}

// fakeDestination is an agent on loopback whose restore and outcome
// calls are the test's; it returns a client of it.
func fakeDestination(t *testing.T, restore, outcome http.HandlerFunc) *agent.Client {
	t.Helper()
	return fakeAgent(t, map[string]http.HandlerFunc{"POST /v1/restore": restore, "GET /v1/outcome": outcome})
}

// fakeAgent is an agent on loopback with routes; it returns a client of
// it.
func fakeAgent(t *testing.T, routes map[string]http.HandlerFunc) *agent.Client {
	t.Helper()
	dir := t.TempDir()
	lo := []net.IP{net.ParseIP("127.0.0.1")}
	if err := agent.Init(dir, []agent.Host{{Name: "src", IPs: lo}, {Name: "dst", IPs: lo}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	ids := map[string]*agent.Identity{}
	for _, n := range []string{"src", "dst"} {
		id, err := agent.LoadIdentity(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		ids[n] = id
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &agent.Server{ID: ids["dst"], Info: agent.HostInfo, Routes: routes}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return agent.NewClient(ids["src"], l.Addr().String())
}

// What the source makes of the destination's answers, or of their loss:
// an answer lost after the whole checkpoint went is asked after; one
// lost before is a failed transfer; the stream's digest is that of what
// was meant to be sent, even when a byte is corrupted on the way.
func TestSend(t *testing.T) {
	const ckpt = "localhost/migros/migrate/c:1"
	data := strings.Repeat("checkpoint ", 300000) // more than HTTP/2 windows
	want := fmt.Sprintf("%08x", crc32.Checksum([]byte(data), castagnoli))
	// readAll reads the body and checks the trailer's digest.
	readAll := func(t *testing.T, r *http.Request, corrupt bool) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the body: %v", err)
			return
		}
		got := fmt.Sprintf("%08x", crc32.Checksum(b, castagnoli))
		if tr := r.Trailer.Get(digestTrailer); tr != want || (got == want) == corrupt {
			t.Errorf("trailer %q, want %q; corrupted %v, want %v", tr, want, got != want, corrupt)
		}
	}
	result := Result{Bytes: int64(len(data)), PID: 42}
	for _, tc := range []struct {
		name    string
		fault   string
		restore func(t *testing.T, w http.ResponseWriter, r *http.Request)
		outcome *Outcome // nil: must not be asked
		phase   string   // of the error, "" for none
		// interrupt: the source's command is interrupted once the
		// destination has the whole checkpoint (restore unused).
		interrupt bool
	}{
		{name: "answered", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			readAll(t, r, false)
			agent.WriteJSON(w, http.StatusOK, result)
		}},
		{name: "refused", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			readAll(t, r, false)
			agent.WriteError(w, &PhaseError{PhaseRestore, errors.New("no uplink")})
		}, phase: PhaseRestore},
		{name: "corrupted on the way", fault: "corrupt-stream@1000", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			readAll(t, r, true)
			agent.WriteError(w, &PhaseError{PhaseTransfer, errors.New("corrupt")})
		}, phase: PhaseTransfer},
		{name: "cut mid-stream", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadFull(r.Body, make([]byte, 100))
			panic(http.ErrAbortHandler)
		}, phase: PhaseTransfer},
		{name: "answer lost, restored", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			readAll(t, r, false)
			panic(http.ErrAbortHandler)
		}, outcome: &Outcome{State: StateRunning, Result: &result}},
		{name: "answer lost, failed", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			readAll(t, r, false)
			panic(http.ErrAbortHandler)
		}, outcome: &Outcome{State: StateFailed, Phase: PhaseRestore, Error: "runc: boom"}, phase: PhaseRestore},
		{name: "answer lost, agent restarted", restore: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			readAll(t, r, false)
			panic(http.ErrAbortHandler)
		}, outcome: &Outcome{State: StateAbsent}, phase: PhaseTransfer},
		{name: "interrupted, restored there", interrupt: true, outcome: &Outcome{State: StateRunning, Result: &result}},
		{name: "interrupted, failed there", interrupt: true,
			outcome: &Outcome{State: StateFailed, Phase: PhaseRestore, Error: "runc: boom"}, phase: PhaseRestore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fault != "" {
				t.Setenv(FaultEnv, tc.fault)
			}
			asked := false
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dest := fakeDestination(t,
				func(w http.ResponseWriter, r *http.Request) {
					if tc.interrupt {
						readAll(t, r, false)
						cancel()
						<-r.Context().Done()
						return
					}
					tc.restore(t, w, r)
				},
				func(w http.ResponseWriter, r *http.Request) {
					asked = true
					if r.URL.Query().Get("checkpoint") != ckpt || tc.outcome == nil {
						t.Errorf("asked %v", r.URL)
						agent.WriteJSON(w, http.StatusOK, Outcome{State: StateAbsent})
						return
					}
					agent.WriteJSON(w, http.StatusOK, tc.outcome)
				})
			var res Result
			err := send(ctx, dest, &Request{ID: "c", Checkpoint: ckpt},
				io.NopCloser(strings.NewReader(data)), &res, Options{})
			if tc.phase == "" {
				if err != nil || res != result {
					t.Fatalf("error %v, result %+v", err, res)
				}
			} else if failedPhase(err) != tc.phase || !errors.As(err, new(*PhaseError)) {
				t.Fatalf("error %v, phase %q, want a *PhaseError in %s", err, failedPhase(err), tc.phase)
			}
			if asked != (tc.outcome != nil) {
				t.Fatalf("asked for the outcome: %v", asked)
			}
		})
	}
}

// The stream counts, hashes, and keeps to its rate; a fault flips one
// byte.
func TestStream(t *testing.T) {
	data := bytes.Repeat([]byte{7}, 200<<10)
	for _, tc := range []struct {
		name      string
		limit     int64
		corruptAt int64
		atLeast   time.Duration
	}{
		{name: "plain", corruptAt: -1},
		{name: "held to 1 MiB/s", limit: 1 << 20, corruptAt: -1, atLeast: 190 * time.Millisecond},
		{name: "corrupted", corruptAt: 4097},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStream(bytes.NewReader(data), tc.limit)
			s.corruptAt = tc.corruptAt
			start := time.Now()
			got, err := io.ReadAll(s)
			if err != nil || !s.whole() || s.sent() != int64(len(data)) {
				t.Fatalf("read %d (%v), whole %v, sent %d", len(got), err, s.whole(), s.sent())
			}
			if d := time.Since(start); d < tc.atLeast {
				t.Errorf("took %v, less than %v", d, tc.atLeast)
			}
			if s.digest() != fmt.Sprintf("%08x", crc32.Checksum(data, castagnoli)) {
				t.Errorf("digest %s is not of what was meant", s.digest())
			}
			var diff []int
			for i := range got {
				if got[i] != data[i] {
					diff = append(diff, i)
				}
			}
			if (tc.corruptAt < 0 && len(diff) != 0) || (tc.corruptAt >= 0 && (len(diff) != 1 || int64(diff[0]) != tc.corruptAt)) {
				t.Errorf("bytes changed at %v", diff)
			}
		})
	}
}

func TestFaultFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want int64
		bad  bool
	}{
		{"", -1, false},
		{"corrupt-stream@600000", 600000, false},
		{"corrupt-stream@-1", 0, true},
		{"kill-agent", 0, true},
	} {
		t.Setenv(FaultEnv, tc.env)
		got, err := faultFromEnv()
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("%q: %d, %v", tc.env, got, err)
		}
	}
}

// countingReaderAt is a content.ReaderAt over data that counts its reads.
type countingReaderAt struct {
	data  []byte
	reads int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads++
	if off >= int64(len(c.data)) {
		return 0, io.EOF
	}
	n := copy(p, c.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (c *countingReaderAt) Size() int64  { return int64(len(c.data)) }
func (c *countingReaderAt) Close() error { return nil }

// Reading a blob in small pieces, as the exporter does, takes a few
// large reads of the store, and gives the blob back whole.
func TestReadAhead(t *testing.T) {
	for _, size := range []int{0, 1, readAheadSize - 1, readAheadSize, 2*readAheadSize + 12345} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		under := &countingReaderAt{data: data}
		got, err := io.ReadAll(io.NewSectionReader(&readAhead{ReaderAt: under}, 0, int64(size)))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read %d, %v", size, len(got), err)
		}
		if want := size/readAheadSize + 2; under.reads > want {
			t.Errorf("%d bytes: %d reads of the store, want at most %d", size, under.reads, want)
		}
		// A read that straddles two windows.
		if size > readAheadSize {
			p := make([]byte, 100)
			n, err := (&readAhead{ReaderAt: under}).ReadAt(p, readAheadSize-50)
			if n != 100 || err != nil || !bytes.Equal(p, data[readAheadSize-50:readAheadSize+50]) {
				t.Errorf("straddling read: %d, %v", n, err)
			}
		}
	}
}
