// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
