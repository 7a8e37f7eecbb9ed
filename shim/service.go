// SPDX-License-Identifier: Apache-2.0

// Package shim is the task service of containerd-shim-migros-v1 (runtime
// io.containerd.migros.v1): containerd's runc task service, wrapped, whose
// checkpoint and restore also carry the RDMA state of the container's
// processes. Stock CRIU, run by runc, does the processes; MigrOS' CRIU
// plugin, which the wrapper points CRIU at, hands it the uverbs files and
// runs migros to dump and rebuild their RDMA objects. A container that
// uses no RDMA behaves exactly as under io.containerd.runc.v2.
package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/migros/migros/runtime/checkpoint"
	"github.com/migros/migros/runtime/idrange"
	"github.com/migros/migros/runtime/install"
	"github.com/migros/migros/runtime/rdmadev"
)

// Service wraps the runc task service.
type Service struct {
	taskAPI.TTRPCTaskService
	paths install.Paths
	// rxeParams holds rdma_rxe's module parameters, where the host's ID
	// range policy goes.
	rxeParams string
	// pageServers holds the requests for page servers of containers'
	// next checkpoints (checkpoint.SetPageServer).
	pageServers string

	mu sync.Mutex
	// restoring: containers created from a checkpoint with RDMA state,
	// by ID, whose Start restores it.
	restoring map[string]bool
	// stopped: paused containers checkpointed leaving them paused, by ID,
	// with their init's pid: their QPs stay Stopped (a migration takes
	// them elsewhere, or gives them back) until the container resumes.
	stopped map[string]int
	// extracted: containers created from a checkpoint that containerd
	// extracted to a temporary directory of its own, by ID: containerd
	// never removes it (a migrated container's whole memory, left on
	// the destination each time), so the shim does once the restore is
	// over.
	extracted map[string]string
	// restoreLog: containers created from a checkpoint, by ID, with the
	// path of the log CRIU's restore writes at their Start.
	restoreLog map[string]string
}

// New wraps inner, the runc task service; paths locate MigrOS' CRIU
// plugin and the migros binary it runs.
func New(inner taskAPI.TTRPCTaskService, paths install.Paths) *Service {
	return &Service{TTRPCTaskService: inner, paths: paths, rxeParams: idrange.ParamsDir, pageServers: checkpoint.PageServerRoot,
		restoring: map[string]bool{}, stopped: map[string]int{}, extracted: map[string]string{},
		restoreLog: map[string]string{}}
}

// RegisterTTRPC serves the wrapper, not the runc service, as the task
// service.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// withPlugin is ctx with the environment that makes the CRIU that runc
// runs load MigrOS' plugin, and the plugin find migros.
func (s *Service) withPlugin(ctx context.Context) context.Context {
	return runc.WithExtraEnv(ctx, "CRIU_LIBS_DIR="+s.paths.PluginDir, "MIGROS_BIN="+s.paths.Helper)
}

// Create gives a container that asks for RDMA the host's RDMA devices
// and an RDMA container MigrOS' CRIU configuration (prepareSpec), puts
// the host's ID range policy, if it has one, in effect before an RDMA
// container creates anything, and records whether the container is
// restored from a checkpoint with RDMA state, which must fit this host:
// its devices, free IDs and objects are checked before anything is
// created.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	usesRDMA, err := prepareSpec(r.Bundle, s.paths.CRIUConfig(), rdmadev.Host{}.Nodes)
	if err != nil {
		return nil, grpcError(err)
	}
	if usesRDMA {
		p, err := idrange.Load(s.paths.IDRanges())
		if err == nil && p != nil {
			err = p.Apply(s.rxeParams)
		}
		if err != nil {
			return nil, grpcError(fmt.Errorf("the host's ID range policy: %w", err))
		}
	}
	rdmaRestore := false
	if r.Checkpoint != "" {
		if err := relativeParent(r.Checkpoint); err != nil {
			return nil, grpcError(err)
		}
		if err := checkpoint.LinkPages(r.Checkpoint); err != nil {
			return nil, grpcError(err)
		}
		imgs, err := checkpoint.Images(r.Checkpoint)
		if err != nil {
			return nil, grpcError(fmt.Errorf("%w: RDMA images of checkpoint %s: %w", errdefs.ErrInvalidArgument, r.Checkpoint, err))
		}
		if len(imgs) > 0 {
			if err := checkpoint.Preflight(imgs); err != nil {
				return nil, grpcError(fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err))
			}
			rdmaRestore = true
		}
	}
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if rdmaRestore {
		s.restoring[r.ID] = true
	}
	if strings.HasPrefix(filepath.Base(r.Checkpoint), extractedPrefix) {
		s.extracted[r.ID] = r.Checkpoint
	}
	if r.Checkpoint != "" {
		s.restoreLog[r.ID] = filepath.Join(criuWorkPath(r), "restore.log")
	}
	s.mu.Unlock()
	return resp, nil
}

// extractedPrefix begins the names of the directories containerd
// extracts a checkpoint to (not a checkpoint path of the runtime's
// options, which is the user's).
const extractedPrefix = "ctrd-checkpoint"

// dropExtracted removes the checkpoint containerd extracted for
// container id, if any.
func (s *Service) dropExtracted(ctx context.Context, id string) {
	s.mu.Lock()
	dir, ok := s.extracted[id]
	delete(s.extracted, id)
	s.mu.Unlock()
	if ok {
		if err := os.RemoveAll(dir); err != nil {
			log.G(ctx).WithError(err).Warnf("container %s: removing its extracted checkpoint", id)
		}
	}
}

// Start of a container created from a checkpoint is its restore: runc
// restore, with the plugin rebuilding the RDMA state of each process
// before it runs and resuming its QPs towards their peers.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	s.mu.Lock()
	restore := r.ExecID == "" && s.restoring[r.ID]
	if restore {
		delete(s.restoring, r.ID)
	}
	s.mu.Unlock()
	if restore {
		ctx = s.withPlugin(ctx)
	}
	resp, err := s.TTRPCTaskService.Start(ctx, r)
	if r.ExecID == "" {
		s.mu.Lock()
		log := s.restoreLog[r.ID]
		delete(s.restoreLog, r.ID)
		s.mu.Unlock()
		if err != nil && log != "" {
			// runc's "criu failed: type RESTORE errno 0" says nothing:
			// CRIU's log says what.
			if e := checkpoint.LogErrors(log); e != "" {
				err = grpcError(fmt.Errorf("%w%s", errgrpc.ToNative(err), e))
			}
		}
		// Restored, or failed to: CRIU is done with the images.
		s.dropExtracted(ctx, r.ID)
	}
	return resp, err
}

// criuWorkPath is where CRIU works (and logs) when the runc shim restores
// the checkpoint of r: the runtime options' CRIU work path, or the
// bundle's work directory.
func criuWorkPath(r *taskAPI.CreateTaskRequest) string {
	if r.Options != nil {
		if v, err := typeurl.UnmarshalAny(r.Options); err == nil {
			if o, ok := v.(*options.Options); ok && o.CriuWorkPath != "" {
				return o.CriuWorkPath
			}
		}
	}
	return filepath.Join(r.Bundle, "work")
}

// Delete forgets a container's pending restore: one created from a
// checkpoint may be deleted without ever starting.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	if r.ExecID == "" {
		s.mu.Lock()
		delete(s.restoring, r.ID)
		delete(s.stopped, r.ID)
		delete(s.restoreLog, r.ID)
		s.mu.Unlock()
		s.dropExtracted(ctx, r.ID)
	}
	return s.TTRPCTaskService.Delete(ctx, r)
}

// Resume of a container checkpointed while paused also resumes its QPs,
// which the checkpoint left Stopped, so that its peers carry on with it.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	pid, stopped := s.stopped[r.ID]
	s.mu.Unlock()
	if stopped {
		if err := checkpoint.Resume(pid); err != nil {
			return nil, grpcError(fmt.Errorf("container %s: resuming its QPs: %w", r.ID, err))
		}
		s.mu.Lock()
		delete(s.stopped, r.ID)
		s.mu.Unlock()
	}
	return s.TTRPCTaskService.Resume(ctx, r)
}

// Checkpoint refuses, before anything is frozen, a container with what
// MigrOS cannot checkpoint; dumps it with its RDMA state; and, if it keeps
// running or the dump fails, resumes its QPs in place so that its peers
// carry on with it. A container that was paused and stays so (a
// migration's source, until the move succeeds or is undone) keeps its
// QPs Stopped until it resumes.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	st, err := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: r.ID})
	if err != nil {
		return nil, err
	}
	pid := int(st.Pid)
	if err := checkpoint.Refusals(pid); err != nil {
		return nil, grpcError(fmt.Errorf("%w: container %s: %w", errdefs.ErrNotImplemented, r.ID, err))
	}
	opts, err := checkpointOptions(ctx, r)
	if err != nil {
		return nil, grpcError(err)
	}
	parent, err := forRunc(opts, r.Path)
	if err != nil {
		return nil, grpcError(err)
	}
	if r.Options, err = typeurl.MarshalAnyToProto(opts); err != nil {
		return nil, grpcError(err)
	}
	cctx, pages, err := s.withPageServer(s.withPlugin(ctx), r)
	if err != nil {
		return nil, grpcError(err)
	}
	resp, err := s.TTRPCTaskService.Checkpoint(cctx, r)
	if pages != "" {
		os.Remove(pageServerConfig(cctx, s.pageServers, r.ID))
	}
	if err == nil && parent != "" {
		err = grpcError(pointParent(r.Path, parent))
	}
	if err == nil && pages != "" {
		err = grpcError(os.Symlink(pages, filepath.Join(r.Path, checkpoint.PagesLink)))
	}
	switch {
	case err == nil && opts.Exit:
	case err == nil && st.Status == task.Status_PAUSED:
		s.mu.Lock()
		s.stopped[r.ID] = pid
		s.mu.Unlock()
	default:
		if rerr := checkpoint.Resume(pid); rerr != nil {
			log.G(ctx).WithError(rerr).Warnf("container %s: resuming its QPs", r.ID)
			if err == nil {
				err = grpcError(fmt.Errorf("container %s: resuming its QPs after the checkpoint: %w", r.ID, rerr))
			}
		}
	}
	return resp, err
}

// withPageServer is ctx with the CRIU configuration that sends the
// memory pages of r's checkpoint to a page server, if one was asked for
// the container (checkpoint.SetPageServer), and the directory they go to
// on the host that restores it; ctx as it is if none was.
func (s *Service) withPageServer(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (context.Context, string, error) {
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		return ctx, "", nil
	}
	ps, err := checkpoint.TakePageServer(s.pageServers, ns, r.ID)
	if err != nil || ps == nil {
		return ctx, "", err
	}
	if r.Path == "" {
		return nil, "", fmt.Errorf("%w: checkpoint of %s to a page server: no image path", errdefs.ErrInvalidArgument, r.ID)
	}
	conf, err := ps.CRIUConfig()
	if err != nil {
		return nil, "", err
	}
	// Not in the checkpoint: containerd archives all of it.
	path := pageServerConfig(ctx, s.pageServers, r.ID)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, "", err
	}
	return runc.WithExtraEnv(ctx, "CRIU_CONFIG_FILE="+path), ps.Dir, nil
}

// pageServerConfig is where withPageServer writes the CRIU
// configuration of container id's checkpoint.
func pageServerConfig(ctx context.Context, root, id string) string {
	ns, _ := namespaces.Namespace(ctx)
	return filepath.Join(root, ns, id+".criu.conf")
}

// checkpointOptions are r's runc checkpoint options. The runc service
// takes only runc's type; containerd's CRI plugin sends its own for a
// runtime that is not runc, which carries nothing a runc checkpoint
// uses: r then goes on with runc's defaults (the container keeps
// running).
func checkpointOptions(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*options.CheckpointOptions, error) {
	if r.Options == nil {
		return &options.CheckpointOptions{}, nil
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		return nil, fmt.Errorf("%w: checkpoint options: %w", errdefs.ErrInvalidArgument, err)
	}
	if o, ok := v.(*options.CheckpointOptions); ok {
		return o, nil
	}
	log.G(ctx).Debugf("checkpoint of %s: options of type %s taken as runc's defaults", r.ID, r.Options.GetTypeUrl())
	r.Options = nil
	return &options.CheckpointOptions{}, nil
}

// forRunc adjusts opts for runc's checkpoint into dir: CRIU's log goes
// into the checkpoint (what went wrong, and where the time went: a
// migration reports its RDMA dump), and an absolute parent (a migration's
// last pre-dump, which the destination keeps at the same path) becomes
// relative to dir, the only kind runc takes. It returns that absolute
// parent, which the checkpoint's parent link must name once it is taken:
// containerd restores from a copy of the checkpoint somewhere else.
func forRunc(opts *options.CheckpointOptions, dir string) (parent string, err error) {
	if dir == "" {
		return "", nil
	}
	if opts.WorkPath == "" {
		opts.WorkPath = dir
	}
	if !filepath.IsAbs(opts.ParentPath) {
		return "", nil
	}
	parent = filepath.Clean(opts.ParentPath)
	if opts.ParentPath, err = filepath.Rel(dir, parent); err != nil {
		return "", fmt.Errorf("%w: checkpoint parent %s: %w", errdefs.ErrInvalidArgument, parent, err)
	}
	return parent, nil
}

// pointParent makes the parent link of the checkpoint in dir, which CRIU
// made relative, name parent, wherever the checkpoint goes next
// (relativeParent makes it relative there).
func pointParent(dir, parent string) error {
	if err := relink(filepath.Join(dir, "parent"), parent); err != nil {
		return fmt.Errorf("checkpoint parent link: %w", err)
	}
	return nil
}

// relink makes the symbolic link at link, which must exist, name target.
func relink(link, target string) error {
	if err := os.Remove(link); err != nil {
		return err
	}
	return os.Symlink(target, link)
}

// relativeParent makes the parent link of the checkpoint in dir relative
// to dir if it is absolute (pointParent): CRIU's restored process opens
// it once inside the container's root, where only a path relative to the
// images directory, which CRIU holds open, leads out to it.
func relativeParent(dir string) error {
	link := filepath.Join(dir, "parent")
	fi, err := os.Lstat(link)
	if errors.Is(err, os.ErrNotExist) || (err == nil && fi.Mode()&os.ModeSymlink == 0) {
		return nil
	}
	var parent string
	if err == nil {
		parent, err = os.Readlink(link)
	}
	if err == nil && !filepath.IsAbs(parent) {
		return nil
	}
	if err == nil {
		_, err = os.Stat(parent)
	}
	if err != nil {
		return fmt.Errorf("%w: checkpoint %s: its parent: %w", errdefs.ErrFailedPrecondition, dir, err)
	}
	rel, err := filepath.Rel(dir, parent)
	if err == nil {
		err = relink(link, rel)
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s: its parent link: %w", dir, err)
	}
	return nil
}

// grpcError is err as the task API carries it to containerd: its errdefs
// class and its message. (errgrpc.ToGRPC also sends each error wrapped or
// joined in err as a detail, which ctr prints after the message, a line
// each: the same causes over and over.)
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	return errgrpc.ToGRPC(classed{msg: err.Error(), class: errdefs.Resolve(err)})
}

// classed is an error's message with its errdefs class.
type classed struct {
	msg   string
	class error
}

func (c classed) Error() string { return c.msg }
func (c classed) Unwrap() error { return c.class }
