// SPDX-License-Identifier: Apache-2.0

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/rdma/image"
	"github.com/migros/migros/runtime/install"
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
}

func (f *fakeTasks) Create(_ context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	f.created = append(f.created, r.ID)
	return &taskAPI.CreateTaskResponse{Pid: f.pid}, nil
}

func (f *fakeTasks) Start(_ context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	f.started = append(f.started, r.ID)
	return &taskAPI.StartResponse{Pid: f.pid}, nil
}

func (f *fakeTasks) State(_ context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	return &taskAPI.StateResponse{ID: r.ID, Pid: f.pid}, nil
}

func (f *fakeTasks) Checkpoint(_ context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	f.checkpointed = append(f.checkpointed, r)
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
			if tc.wantErr != nil {
				if !errors.Is(errgrpc.ToNative(err), tc.wantErr) || len(f.created) != 0 {
					t.Fatalf("error %v (runc created %v), want %v and nothing created", err, f.created, tc.wantErr)
				}
				return
			}
			if err != nil || len(f.created) != 1 {
				t.Fatalf("create: %v, runc created %v", err, f.created)
			}
			if s.restoring["c"] != tc.restoring {
				t.Fatalf("restoring RDMA state: %v, want %v", s.restoring["c"], tc.restoring)
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

func TestConfigureCRIU(t *testing.T) {
	const conf = "/opt/migros/lib/criu/migros.conf"
	rdmaSpec := `{"ociVersion":"1.2.0","process":{"args":["sh"]},"x-extra":{"kept":true},` +
		`"linux":{"devices":[{"path":"/dev/infiniband/uverbs0","type":"c","major":231,"minor":192}]}}`
	for _, tc := range []struct {
		name, spec string
		want       string // the annotation afterwards; "" for an unchanged spec
		wantErr    error
	}{
		{name: "no RDMA device", spec: `{"ociVersion":"1.2.0","linux":{"devices":[{"path":"/dev/fuse"}]}}`},
		{name: "no linux section", spec: `{"ociVersion":"1.2.0"}`},
		{name: "RDMA device", spec: rdmaSpec, want: conf},
		{name: "its own CRIU configuration", spec: `{"annotations":{"org.criu.config":"/mine.conf"},` +
			`"linux":{"devices":[{"path":"/dev/infiniband/uverbs0"}]}}`},
		{name: "not JSON", spec: `{"linux":`, wantErr: errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "config.json")
			if err := os.WriteFile(path, []byte(tc.spec), 0o640); err != nil {
				t.Fatal(err)
			}
			err := configureCRIU(dir, conf)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			if tc.want == "" {
				if string(b) != tc.spec {
					t.Fatalf("spec changed:\n%s", b)
				}
				return
			}
			var got struct {
				Annotations map[string]string `json:"annotations"`
				Extra       map[string]bool   `json:"x-extra"`
				Process     struct{ Args []string }
			}
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if got.Annotations[criuConfigAnnotation] != tc.want || !got.Extra["kept"] || len(got.Process.Args) != 1 {
				t.Fatalf("spec after: %s", b)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
				t.Errorf("spec mode %v, was 0640", st.Mode().Perm())
			}
		})
	}
	if err := configureCRIU(t.TempDir(), conf); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bundle without a spec: %v", err)
	}
}
