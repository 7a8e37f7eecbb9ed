// SPDX-License-Identifier: Apache-2.0

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/image"
	"github.com/migros/migros/runtime/checkpoint"
	"github.com/migros/migros/runtime/install"
	"github.com/migros/migros/runtime/rdmadev"
)

// fakeTasks stands in for runc's task service and records what reached
// it. Methods it does not override panic (nil interface): a test that
// reaches one is wrong.
type fakeTasks struct {
	taskAPI.TTRPCTaskService
	pid          uint32
	created      []string
	started      []string
	checkpointed []*taskAPI.CheckpointTaskRequest
	failCkpt     error
	failStart    error
	status       task.Status
	resumed      []string
	onCheckpoint func() // while runc would checkpoint
}

func (f *fakeTasks) Create(_ context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	f.created = append(f.created, r.ID)
	return &taskAPI.CreateTaskResponse{Pid: f.pid}, nil
}

func (f *fakeTasks) Start(_ context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	f.started = append(f.started, r.ID)
	return &taskAPI.StartResponse{Pid: f.pid}, f.failStart
}

func (f *fakeTasks) Delete(_ context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	return &taskAPI.DeleteResponse{Pid: f.pid}, nil
}

func (f *fakeTasks) State(_ context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	return &taskAPI.StateResponse{ID: r.ID, Pid: f.pid, Status: f.status}, nil
}

func (f *fakeTasks) Resume(_ context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	f.resumed = append(f.resumed, r.ID)
	return &emptypb.Empty{}, nil
}

func (f *fakeTasks) Checkpoint(_ context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	f.checkpointed = append(f.checkpointed, r)
	if f.onCheckpoint != nil {
		f.onCheckpoint()
	}
	return &emptypb.Empty{}, f.failCkpt
}

func anyOf(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCheckpointOptions(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     *anypb.Any
		wantExit bool
		kept     bool // r.Options still set for runc
		wantErr  error
	}{
		{name: "none"},
		{name: "runc's, exit", opts: anyOf(t, &options.CheckpointOptions{Exit: true}), wantExit: true, kept: true},
		{name: "runc's, leave running", opts: anyOf(t, &options.CheckpointOptions{WorkPath: "/w"}), kept: true},
		{name: "CRI's for another runtime", opts: anyOf(t, &runtimeoptions.Options{TypeUrl: "x", ConfigPath: "/c"})},
		{name: "not a known type", opts: &anypb.Any{TypeUrl: "example.com/unknown", Value: []byte{1}}, wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &taskAPI.CheckpointTaskRequest{ID: "c", Options: tc.opts}
			o, err := checkpointOptions(context.Background(), r)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || o.Exit != tc.wantExit || (r.Options != nil) != tc.kept {
				t.Fatalf("options %+v (%v), request options kept: %v; want exit %v, kept %v", o, err, r.Options != nil, tc.wantExit, tc.kept)
			}
		})
	}
}

// created checks a Create's outcome, err: with wantErr, that error and
// nothing created by runc; else runc created the container, and it says
// so.
func created(t *testing.T, f *fakeTasks, err, wantErr error) bool {
	t.Helper()
	if wantErr != nil {
		if !errors.Is(errgrpc.ToNative(err), wantErr) || len(f.created) != 0 {
			t.Fatalf("error %v (runc created %v), want %v and nothing created", err, f.created, wantErr)
		}
		return false
	}
	if err != nil || len(f.created) != 1 {
		t.Fatalf("create: %v, runc created %v", err, f.created)
	}
	return true
}

// writeImage puts an RDMA image of one QP in a checkpoint directory.
func writeImage(t *testing.T, dir string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, image.FileName(7)), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Create with a checkpoint that this host cannot restore fails before
// runc creates anything; one without RDMA state is runc's alone, and its
// Start restores nothing of MigrOS'.
func TestCreateFromCheckpoint(t *testing.T) {
	good, err := image.Encode(&image.Context{PID: 1, FD: 3, Device: "/dev/infiniband/uverbs-none",
		Objects: &rdma.ContextDump{PDs: []uint32{0}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		image     []byte // none if nil
		wantErr   error
		restoring bool
	}{
		{name: "no RDMA state"},
		{name: "corrupt RDMA image", image: []byte("MGRSRDMA but nothing else"), wantErr: errdefs.ErrInvalidArgument},
		{name: "device missing here", image: good, wantErr: errdefs.ErrFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.image != nil {
				writeImage(t, dir, tc.image)
			}
			f := &fakeTasks{pid: 42}
			s := New(f, install.At("/opt/migros/bin"))
			_, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "c", Checkpoint: dir})
			if !created(t, f, err, tc.wantErr) {
				return
			}
			if s.restoring["c"] != tc.restoring {
				t.Fatalf("restoring RDMA state: %v, want %v", s.restoring["c"], tc.restoring)
			}
		})
	}
}

// A container created from a checkpoint with RDMA state restores it at
// its Start, once; deleted before starting, it is forgotten.
func TestRestoreMark(t *testing.T) {
	s := New(&fakeTasks{pid: 42}, install.At("/opt/migros/bin"))
	ctx := context.Background()
	for _, id := range []string{"started", "deleted"} {
		s.restoring[id] = true
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "started", ExecID: "exec1"}); err != nil || !s.restoring["started"] {
		t.Fatalf("an exec's start took the container's restore: %v", err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "started"}); err != nil || s.restoring["started"] {
		t.Fatalf("restore still pending after the start: %v", err)
	}
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "deleted"}); err != nil || len(s.restoring) != 0 {
		t.Fatalf("restores pending after the delete: %v, %v", s.restoring, err)
	}
}

// The checkpoint containerd extracted for a restore is removed once the
// task has started (or is deleted unstarted); a checkpoint directory of
// the user's (runc's CriuImagePath option) is left alone.
func TestExtractedCheckpointRemoved(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, dir string
		remove    func(s *Service) error
		gone      bool
	}{
		{name: "started", dir: "ctrd-checkpoint123", gone: true,
			remove: func(s *Service) error { _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c"}); return err }},
		{name: "deleted unstarted", dir: "ctrd-checkpoint456", gone: true,
			remove: func(s *Service) error { _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c"}); return err }},
		{name: "an exec started", dir: "ctrd-checkpoint789",
			remove: func(s *Service) error {
				_, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c", ExecID: "e"})
				return err
			}},
		{name: "the user's", dir: "my-checkpoint",
			remove: func(s *Service) error { _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c"}); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), tc.dir)
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			s := New(&fakeTasks{pid: 42}, install.At("/opt/migros/bin"))
			if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c", Checkpoint: dir}); err != nil {
				t.Fatal(err)
			}
			if err := tc.remove(s); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); os.IsNotExist(err) != tc.gone {
				t.Fatalf("%s: stat %v; want gone %v", dir, err, tc.gone)
			}
		})
	}
}

// A checkpoint of a container without RDMA goes to runc with the request
// as it came; a failed one is reported.
func TestCheckpoint(t *testing.T) {
	f := &fakeTasks{pid: uint32(os.Getpid())}
	s := New(f, install.At("/opt/migros/bin"))
	r := &taskAPI.CheckpointTaskRequest{ID: "c", Path: "/ckpt", Options: anyOf(t, &options.CheckpointOptions{Exit: true})}
	if _, err := s.Checkpoint(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if len(f.checkpointed) != 1 || f.checkpointed[0].Path != "/ckpt" || f.checkpointed[0].Options == nil {
		t.Fatalf("runc got %+v", f.checkpointed)
	}
	f.failCkpt = errors.New("criu failed")
	if _, err := s.Checkpoint(context.Background(), r); err == nil {
		t.Fatal("a failed checkpoint succeeded")
	}
}

// A paused container checkpointed leaving it paused keeps its QPs
// Stopped until it is resumed (a migration's source); a running one, or
// one that exits, leaves nothing to resume.
func TestCheckpointPaused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  task.Status
		exit    bool
		stopped bool
	}{
		{"paused, stays paused", task.Status_PAUSED, false, true},
		{"paused, exits", task.Status_PAUSED, true, false},
		{"running, keeps running", task.Status_RUNNING, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The test's own pid: a process without RDMA contexts.
			f := &fakeTasks{pid: uint32(os.Getpid()), status: tc.status}
			s := New(f, install.At("/opt/migros/bin"))
			ctx := context.Background()
			r := &taskAPI.CheckpointTaskRequest{ID: "c", Path: "/ckpt", Options: anyOf(t, &options.CheckpointOptions{Exit: tc.exit})}
			if _, err := s.Checkpoint(ctx, r); err != nil {
				t.Fatal(err)
			}
			if _, ok := s.stopped["c"]; ok != tc.stopped {
				t.Fatalf("QPs left Stopped: %v, want %v", ok, tc.stopped)
			}
			if _, err := s.Resume(ctx, &taskAPI.ResumeRequest{ID: "c"}); err != nil {
				t.Fatal(err)
			}
			if len(s.stopped) != 0 || len(f.resumed) != 1 {
				t.Fatalf("after Resume: stopped %v, runc resumed %v", s.stopped, f.resumed)
			}
		})
	}
	// Deleted without resuming, it is forgotten.
	s := New(&fakeTasks{pid: 42}, install.At("/opt/migros/bin"))
	s.stopped["c"] = 42
	if _, err := s.Delete(context.Background(), &taskAPI.DeleteRequest{ID: "c"}); err != nil || len(s.stopped) != 0 {
		t.Fatalf("after Delete: %v, %v", s.stopped, err)
	}
}

func TestPrepareSpec(t *testing.T) {
	const conf = "/opt/migros/lib/criu/migros.conf"
	devs := []rdmadev.Node{{Path: "/dev/infiniband/uverbs0", Major: 231, Minor: 192, IBDev: "rxe0"},
		{Path: "/dev/infiniband/rdma_cm", Major: 10, Minor: 58}}
	host := func() ([]rdmadev.Node, error) { return devs, nil }
	none := func() ([]rdmadev.Node, error) { return nil, os.ErrNotExist }
	const process = `"process":{"args":["sh"],"rlimits":[{"type":"RLIMIT_MEMLOCK","hard":65536,"soft":65536},{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}]}`
	for _, tc := range []struct {
		name, spec string
		devices    func() ([]rdmadev.Node, error)
		unchanged  bool
		wantDevs   int    // devices in the spec afterwards
		wantConf   string // its CRIU configuration afterwards
		rdma       bool   // an RDMA container, though its spec stays as it is
		wantErr    error
	}{
		{name: "no RDMA", spec: `{"ociVersion":"1.2.0","linux":{"devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]}}`,
			devices: host, unchanged: true},
		{name: "no linux section", spec: `{"ociVersion":"1.2.0"}`, devices: host, unchanged: true},
		{name: "an RDMA device of its own", spec: `{"ociVersion":"1.2.0",` + process + `,"linux":{"devices":[{"path":"/dev/infiniband/uverbs0","type":"c","major":231,"minor":192}]}}`,
			devices: none, wantDevs: 1, wantConf: conf},
		{name: "asks for RDMA", spec: `{"ociVersion":"1.2.0","annotations":{"io.migros.rdma":"true"},` + process + `}`,
			devices: host, wantDevs: 2, wantConf: conf},
		{name: "asks for RDMA, has uverbs0", spec: `{"ociVersion":"1.2.0","annotations":{"io.migros.rdma":"true"},` + process +
			`,"linux":{"devices":[{"path":"/dev/infiniband/uverbs0","type":"c","major":231,"minor":192}]}}`,
			devices: host, wantDevs: 2, wantConf: conf},
		{name: "an RDMA device, its own CRIU configuration, memlock unlimited", spec: `{"annotations":{"org.criu.config":"/mine.conf"},` +
			`"process":{"rlimits":[{"type":"RLIMIT_MEMLOCK","hard":18446744073709551615,"soft":18446744073709551615}]},` +
			`"linux":{"devices":[{"path":"/dev/infiniband/uverbs0"}]}}`, devices: host, unchanged: true, rdma: true},
		{name: "its own CRIU configuration", spec: `{"annotations":{"org.criu.config":"/mine.conf"},` +
			`"linux":{"devices":[{"path":"/dev/infiniband/uverbs0"}]}}`, devices: host, unchanged: true, rdma: true},
		{name: "asks for RDMA on a host without", spec: `{"annotations":{"io.migros.rdma":"true"}}`, devices: none,
			wantErr: errdefs.ErrFailedPrecondition},
		{name: "unknown RDMA request", spec: `{"annotations":{"io.migros.rdma":"all"}}`, devices: host,
			wantErr: errdefs.ErrInvalidArgument},
		{name: "not JSON", spec: `{"linux":`, devices: host, wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "config.json")
			if err := os.WriteFile(path, []byte(tc.spec), 0o640); err != nil {
				t.Fatal(err)
			}
			usesRDMA, err := prepareSpec(dir, conf, tc.devices)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.wantConf != "" || tc.rdma; usesRDMA != want {
				t.Errorf("an RDMA container: %v, want %v", usesRDMA, want)
			}
			b, _ := os.ReadFile(path)
			if tc.unchanged {
				if string(b) != tc.spec {
					t.Fatalf("spec changed:\n%s", b)
				}
				return
			}
			var got specs.Spec
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if got.Annotations[criuConfigAnnotation] != tc.wantConf || len(got.Linux.Devices) != tc.wantDevs {
				t.Fatalf("spec after: %s", b)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
				t.Errorf("spec mode %v, was 0640", st.Mode().Perm())
			}
			if got.Process == nil || len(got.Process.Args) != 1 {
				t.Fatalf("process lost: %s", b)
			}
			// An RDMA container: memlock unlimited, other limits kept.
			limits := map[string]uint64{}
			for _, r := range got.Process.Rlimits {
				limits[r.Type] = r.Hard
			}
			if limits["RLIMIT_MEMLOCK"] != math.MaxUint64 || limits["RLIMIT_NOFILE"] != 1024 || len(got.Process.Rlimits) != 2 {
				t.Errorf("rlimits %+v", got.Process.Rlimits)
			}
			if got.Annotations[RDMAAnnotation] == "" {
				return
			}
			// What the container asked for: each device once, allowed
			// in its device cgroup.
			for _, d := range devs {
				n, allowed := 0, false
				for _, sd := range got.Linux.Devices {
					if sd.Path == d.Path {
						n++
					}
				}
				for _, r := range got.Linux.Resources.Devices {
					allowed = allowed || (r.Allow && r.Major != nil && *r.Major == d.Major && *r.Minor == d.Minor && r.Access == "rwm")
				}
				if n != 1 || !allowed {
					t.Errorf("device %s: %d in the spec, allowed: %v", d.Path, n, allowed)
				}
			}
		})
	}
	if _, err := prepareSpec(t.TempDir(), conf, host); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bundle without a spec: %v", err)
	}
}

// Before an RDMA container is created, the host's ID range policy is put
// in effect; a policy rxe cannot take fails the create before runc
// creates anything; a container without RDMA leaves rxe alone.
func TestCreateAppliesIDRanges(t *testing.T) {
	const rdmaSpec = `{"linux":{"devices":[{"path":"/dev/infiniband/uverbs0","type":"c","major":231,"minor":192}]}}`
	for _, tc := range []struct {
		name, policy, spec string
		want               string // the module's QPN range afterwards
		wantErr            error
	}{
		{name: "RDMA container", policy: "qpn = 0x1000-0x1fff", spec: rdmaSpec, want: "0x1000-0x1fff"},
		{name: "no policy", spec: rdmaSpec, want: "\n"},
		{name: "container without RDMA", policy: "qpn = 0x1000-0x1fff", spec: `{}`, want: "\n"},
		{name: "bad policy", policy: "qpn = 0x2000-0x1000", spec: rdmaSpec, wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := install.At("/opt/migros/bin")
			paths.ConfigDir = t.TempDir()
			if tc.policy != "" {
				if err := os.WriteFile(paths.IDRanges(), []byte(tc.policy), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			params := t.TempDir()
			for _, k := range []string{"qpn", "mr", "mw"} {
				if err := os.WriteFile(filepath.Join(params, "migros_"+k+"_range"), []byte("\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			bundle := t.TempDir()
			if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(tc.spec), 0o644); err != nil {
				t.Fatal(err)
			}
			f := &fakeTasks{pid: 42}
			s := New(f, paths)
			s.rxeParams = params
			_, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "c", Bundle: bundle})
			if !created(t, f, err, tc.wantErr) {
				return
			}
			b, err := os.ReadFile(filepath.Join(params, "migros_qpn_range"))
			if err != nil || string(b) != tc.want {
				t.Fatalf("QPN range %q (%v), want %q", b, err, tc.want)
			}
		})
	}
}

// An error reaches containerd with its class and its message alone, not
// its causes again as details (ctr prints each one after the message).
func TestGRPCError(t *testing.T) {
	err := fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition,
		errors.Join(fmt.Errorf("QPN 0x14: %w", errors.New("taken")), fmt.Errorf("MR 0x541: %w", errors.New("taken"))))
	st, ok := status.FromError(grpcError(err))
	if !ok {
		t.Fatal("not a gRPC status")
	}
	if st.Code() != codes.FailedPrecondition || st.Message() != err.Error() || len(st.Details()) != 0 {
		t.Fatalf("status %v %q, %d details; want FailedPrecondition %q and none", st.Code(), st.Message(), len(st.Details()), err)
	}
	if !errors.Is(errgrpc.ToNative(grpcError(err)), errdefs.ErrFailedPrecondition) {
		t.Fatal("class lost")
	}
	if grpcError(nil) != nil {
		t.Fatal("nil error became an error")
	}
}

func TestForRunc(t *testing.T) {
	for _, tc := range []struct {
		name             string
		dir, work, par   string
		wantWork         string
		wantPar, wantAbs string
	}{
		{name: "no checkpoint directory", work: "", par: "/p", wantPar: "/p"},
		{name: "log into the checkpoint", dir: "/c/ckpt", wantWork: "/c/ckpt"},
		{name: "work path kept", dir: "/c/ckpt", work: "/w", wantWork: "/w"},
		{name: "relative parent kept", dir: "/c/ckpt", par: "../pre-1", wantWork: "/c/ckpt", wantPar: "../pre-1"},
		{name: "absolute parent made relative", dir: "/tmp/ctrd-1/ckpt", par: "/var/lib/migros/migrate/t/pre-2/",
			wantWork: "/tmp/ctrd-1/ckpt", wantPar: "../../../var/lib/migros/migrate/t/pre-2", wantAbs: "/var/lib/migros/migrate/t/pre-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &options.CheckpointOptions{WorkPath: tc.work, ParentPath: tc.par}
			abs, err := forRunc(o, tc.dir)
			if err != nil || o.WorkPath != tc.wantWork || o.ParentPath != tc.wantPar || abs != tc.wantAbs {
				t.Fatalf("work %q parent %q abs %q (%v), want %q %q %q", o.WorkPath, o.ParentPath, abs, err,
					tc.wantWork, tc.wantPar, tc.wantAbs)
			}
		})
	}
}

func TestPointParent(t *testing.T) {
	dir := t.TempDir()
	if err := pointParent(dir, "/p"); err == nil {
		t.Fatal("a checkpoint without a parent link was given one")
	}
	if err := os.Symlink("../../pre-2", filepath.Join(dir, "parent")); err != nil {
		t.Fatal(err)
	}
	if err := pointParent(dir, "/var/lib/migros/migrate/t/pre-2"); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "parent")); err != nil || l != "/var/lib/migros/migrate/t/pre-2" {
		t.Fatalf("parent link %q (%v)", l, err)
	}
}

// A failed restore's error carries what CRIU's log says went wrong, from
// the bundle's work directory or the runtime options' CRIU work path.
func TestRestoreErrorHasCRIULog(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		workOpt bool
		log     string
		want    string
	}{
		{name: "bundle's work directory", log: "(00.1) x\n(00.2) Error (criu/pagemap.c:1): no parent\n", want: "Error (criu/pagemap.c:1): no parent"},
		{name: "options' work path", workOpt: true, log: "(00.2) Error (criu/cr-restore.c:9): boom\n", want: "Error (criu/cr-restore.c:9): boom"},
		{name: "no error in the log", log: "(00.1) fine\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bundle, work := t.TempDir(), t.TempDir()
			r := &taskAPI.CreateTaskRequest{ID: "c", Bundle: bundle, Checkpoint: t.TempDir()}
			logDir := filepath.Join(bundle, "work")
			if tc.workOpt {
				r.Options, logDir = anyOf(t, &options.Options{CriuWorkPath: work}), work
			}
			if err := os.MkdirAll(logDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"ociVersion": "1.2.0"}`), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(logDir, "restore.log"), []byte(tc.log), 0o600); err != nil {
				t.Fatal(err)
			}
			f := &fakeTasks{pid: 42, failStart: errgrpc.ToGRPC(errors.New("criu failed: type RESTORE errno 0"))}
			s := New(f, install.At("/opt/migros/bin"))
			if _, err := s.Create(ctx, r); err != nil {
				t.Fatal(err)
			}
			_, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c"})
			if err == nil || !strings.Contains(err.Error(), "criu failed: type RESTORE errno 0") ||
				(tc.want != "" && !strings.Contains(err.Error(), tc.want)) ||
				(tc.want == "" && strings.Contains(err.Error(), "criu errors")) {
				t.Fatalf("start: %v, want runc's error with %q", err, tc.want)
			}
			if len(s.restoreLog) != 0 {
				t.Fatalf("restore log still kept: %v", s.restoreLog)
			}
		})
	}
}

// A checkpoint's absolute parent link (a migration's last pre-dump) is
// made relative to the checkpoint before the restore; relative links, a
// checkpoint without a parent and a missing parent are told apart.
func TestRelativeParent(t *testing.T) {
	root := t.TempDir()
	pre := filepath.Join(root, "var", "pre-2")
	if err := os.MkdirAll(pre, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, link, want string
		wantErr          error
	}{
		{name: "no parent"},
		{name: "absolute", link: pre, want: "../../var/pre-2"},
		{name: "relative", link: "../elsewhere", want: "../elsewhere"},
		{name: "absolute, missing", link: filepath.Join(root, "gone"), wantErr: errdefs.ErrFailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(root, "tmp", tc.name)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if tc.link != "" {
				if err := os.Symlink(tc.link, filepath.Join(dir, "parent")); err != nil {
					t.Fatal(err)
				}
			}
			err := relativeParent(dir)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			got, lerr := os.Readlink(filepath.Join(dir, "parent"))
			if err != nil || (tc.link == "" && !os.IsNotExist(lerr)) || (tc.link != "" && got != tc.want) {
				t.Fatalf("link %q (%v, %v), want %q", got, err, lerr, tc.want)
			}
		})
	}
}

// A checkpoint asked to send its pages to a page server has CRIU
// configured for it while runc checkpoints, and ends with the link to
// where the pages went; the request serves once.
func TestCheckpointToPageServer(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	root, ckpt := t.TempDir(), t.TempDir()
	var conf string
	f := &fakeTasks{pid: uint32(os.Getpid()), status: task.Status_RUNNING}
	f.onCheckpoint = func() {
		b, _ := os.ReadFile(filepath.Join(root, "default", "c.criu.conf"))
		conf = string(b)
	}
	s := New(f, install.At("/opt/migros/bin"))
	s.pageServers = root
	ps := checkpoint.PageServer{Address: "127.0.0.1:41000", Dir: "/var/lib/migros/migrate/t/pages"}
	if _, err := checkpoint.SetPageServer(root, "default", "c", ps); err != nil {
		t.Fatal(err)
	}
	r := &taskAPI.CheckpointTaskRequest{ID: "c", Path: ckpt, Options: anyOf(t, &options.CheckpointOptions{})}
	if _, err := s.Checkpoint(ctx, r); err != nil {
		t.Fatal(err)
	}
	if want := "page-server\naddress 127.0.0.1\nport 41000\n"; conf != want {
		t.Errorf("CRIU's configuration during the checkpoint: %q, want %q", conf, want)
	}
	if l, err := os.Readlink(filepath.Join(ckpt, checkpoint.PagesLink)); err != nil || l != ps.Dir {
		t.Errorf("pages link %q, %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(root, "default", "c.criu.conf")); err == nil {
		t.Error("CRIU's configuration left behind")
	}
	// The next checkpoint keeps its pages.
	conf, ckpt = "", t.TempDir()
	r.Path = ckpt
	if _, err := s.Checkpoint(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(ckpt, checkpoint.PagesLink)); conf != "" || err == nil {
		t.Errorf("a second checkpoint used the page server (configuration %q)", conf)
	}
}
