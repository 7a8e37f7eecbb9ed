// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/migros/migros/rdma"
	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/checkpoint"
	"github.com/migros/migros/runtime/container"
)

// Request is what a migration's source tells its destination, first to
// check that the container can move there (preflight), then with the
// container's checkpoint (restore).
type Request struct {
	ID         string `json:"id"`         // the container
	Checkpoint string `json:"checkpoint"` // its checkpoint's image name
	Image      string `json:"image"`      // the image it runs
	Runtime    string `json:"runtime"`
	RxeVersion string `json:"rxe_version"` // the source's MigrOS rxe
	// IDs are the RDMA IDs the container holds, by uverbs device.
	IDs map[string][]rdma.ID `json:"ids"`
	// Memory is what the container's cgroup uses, in bytes: about what
	// its checkpoint takes on disk, and its restore in memory.
	Memory int64  `json:"memory"`
	Net    *Netns `json:"net,omitempty"`
	// Token names the migration's directory under PreDumpRoot, on both
	// hosts, which holds its pre-dumps and streamed pages; "" for none.
	Token string `json:"token,omitempty"`
	// Pages: the checkpoint's memory went ahead of it, to a page server
	// (TakePages), and is in pagesDir(Token).
	Pages bool `json:"pages,omitempty"`
}

// Result is the destination's account of a restore.
type Result struct {
	Import  time.Duration `json:"import_ns"`  // receiving the checkpoint
	Restore time.Duration `json:"restore_ns"` // the container made and restored
	// CRIURestore is CRIU's run in Restore, RDMARestore MigrOS' plugin's
	// in that (0 if CRIU's log could not be read).
	CRIURestore time.Duration `json:"criu_restore_ns,omitempty"`
	RDMARestore time.Duration `json:"rdma_restore_ns,omitempty"`
	// Resume is, in RDMARestore, the restored QPs resuming.
	Resume time.Duration `json:"resume_ns,omitempty"`
	Bytes  int64         `json:"bytes"`
	PID    uint32        `json:"pid"`
}

// Destination takes containers in on this host, for the agent.
type Destination struct {
	Address   string // containerd's socket
	Namespace string // containerd namespace
	// Uplink is the interface the links of a container's network
	// namespace are made on.
	Uplink string
	// Root is where containerd keeps its data (for the disk check).
	Root string
	// State is containerd's state directory (where the runc shim keeps
	// CRIU's restore log).
	State string
	// CRIU is the criu binary that serves pages (default "criu").
	CRIU string

	outcomes outcomes
	pages    pageServers
}

// Routes are the agent's migration calls.
func (d *Destination) Routes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"POST /v1/preflight": func(w http.ResponseWriter, r *http.Request) {
			var req Request
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				agent.WriteError(w, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err))
				return
			}
			if err := d.Preflight(r.Context(), &req); err != nil {
				agent.WriteError(w, err)
				return
			}
			agent.WriteJSON(w, http.StatusOK, struct{}{})
		},
		// The request is in the header, the body is the checkpoint (an
		// OCI archive of it).
		"POST /v1/restore": func(w http.ResponseWriter, r *http.Request) {
			var req Request
			if err := json.Unmarshal([]byte(r.Header.Get(requestHeader)), &req); err != nil {
				agent.WriteError(w, fmt.Errorf("%w: %s: %w", errdefs.ErrInvalidArgument, requestHeader, err))
				return
			}
			res, err := d.Restore(r.Context(), &req, r.Body, r.Trailer)
			if err != nil {
				agent.WriteError(w, err)
				return
			}
			agent.WriteJSON(w, http.StatusOK, res)
		},
		// A pre-copy round's pre-dump (a tar stream); the header says
		// which.
		"POST /v1/precopy": func(w http.ResponseWriter, r *http.Request) {
			var p PreCopy
			if err := json.Unmarshal([]byte(r.Header.Get(preCopyHeader)), &p); err != nil {
				agent.WriteError(w, fmt.Errorf("%w: %s: %w", errdefs.ErrInvalidArgument, preCopyHeader, err))
				return
			}
			if err := d.TakePreDump(p, r.Body, r.Trailer); err != nil {
				agent.WriteError(w, &PhaseError{PhasePreCopy, err})
				return
			}
			agent.WriteJSON(w, http.StatusOK, struct{}{})
		},
		"DELETE /v1/precopy": func(w http.ResponseWriter, r *http.Request) {
			if err := d.DropPreDumps(r.URL.Query().Get("token")); err != nil {
				agent.WriteError(w, err)
				return
			}
			agent.WriteJSON(w, http.StatusOK, struct{}{})
		},
		// A stream of CRIU's page server protocol, both ways: the memory
		// of a pre-dump or the final dump (name) of the migration with
		// token, on top of its pre-dump parent.
		"POST /v1/pages": func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if err := d.TakePages(r.Context(), q.Get("token"), q.Get("name"), q.Get("parent"), r.Body, w); err != nil {
				agent.WriteError(w, err)
			}
		},
		// What became of a restore, for a source that lost its answer.
		"GET /v1/outcome": func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			agent.WriteJSON(w, http.StatusOK, d.Outcome(r.Context(), q.Get("id"), q.Get("checkpoint")))
		},
	}
}

// requestHeader carries a restore's Request.
const requestHeader = "Migros-Request"

func (d *Destination) client(ctx context.Context) (*containerd.Client, context.Context, error) {
	c, err := dial(d.Address)
	if err != nil {
		return nil, nil, err
	}
	return c, namespaces.WithNamespace(ctx, d.Namespace), nil
}

// dial is a client of the containerd at address.
func dial(address string) (*containerd.Client, error) {
	// containerd.New waits for a socket that is not there.
	if _, err := os.Stat(address); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	c, err := containerd.New(address)
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", address, err)
	}
	return c, nil
}

// Preflight checks, before the source freezes anything, that the
// container can be restored here: the same MigrOS rxe, its image, its
// ID and RDMA IDs free, room for it in memory and on disk, and its
// network namespace free to be made.
func (d *Destination) Preflight(ctx context.Context, req *Request) error {
	var errs []error
	if v := agent.HostInfo().RxeVersion; v != req.RxeVersion {
		errs = append(errs, fmt.Errorf("rdma_rxe here is MigrOS %q, the source's %q", v, req.RxeVersion))
	}
	client, ctx, err := d.client(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	if _, err := client.LoadContainer(ctx, req.ID); err == nil {
		errs = append(errs, fmt.Errorf("a container %s exists here", req.ID))
	}
	if _, err := client.GetImage(ctx, req.Image); err != nil {
		errs = append(errs, fmt.Errorf("image %s: %w", req.Image, err))
	}
	errs = append(errs, checkpoint.CheckFree(req.IDs)...)
	if avail, err := memAvailable(); err == nil && avail < req.Memory {
		errs = append(errs, fmt.Errorf("%s of memory available, the container uses %s", mib(avail), mib(req.Memory)))
	}
	var st unix.Statfs_t
	if err := unix.Statfs(d.Root, &st); err == nil && int64(st.Bavail)*st.Bsize < req.Memory {
		errs = append(errs, fmt.Errorf("%s free in %s, the checkpoint needs about %s",
			mib(int64(st.Bavail)*st.Bsize), d.Root, mib(req.Memory)))
	}
	if req.Token != "" {
		if !validToken.MatchString(req.Token) {
			errs = append(errs, fmt.Errorf("migration token %q is not a valid name", req.Token))
		} else if err := checkPreDumpRoom(req.Memory); err != nil {
			errs = append(errs, err)
		}
	}
	if req.Net != nil {
		for _, dir := range netnsDirs {
			if _, err := os.Stat(filepath.Join(dir, req.Net.Name)); err == nil {
				errs = append(errs, fmt.Errorf("network namespace %s exists here", req.Net.Name))
				break
			}
		}
		if _, err := os.Stat(filepath.Join("/sys/class/net", d.Uplink)); err != nil {
			errs = append(errs, fmt.Errorf("uplink %q for the container's network: %w", d.Uplink, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: pre-flight on %s: %w", errdefs.ErrFailedPrecondition, agent.HostInfo().Host, err)
	}
	return nil
}

// mib is n bytes in MiB.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// memAvailable is the host's MemAvailable, in bytes.
func memAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no MemAvailable in /proc/meminfo")
}

// Outcome is what became of a restore on the destination.
type Outcome struct {
	State  string  `json:"state"`
	Phase  string  `json:"phase,omitempty"` // where it failed
	Error  string  `json:"error,omitempty"`
	Result *Result `json:"result,omitempty"`
	at     time.Time
}

// Outcome states.
const (
	StateReceiving = "receiving"
	StateRestoring = "restoring"
	StateRunning   = "running"
	StateFailed    = "failed"
	// StateAbsent: the agent knows of no such restore (it may have
	// restarted) and the container is not running here.
	StateAbsent = "absent"
)

// outcomes are the restores an agent took, by checkpoint, for an hour.
type outcomes struct {
	mu sync.Mutex
	m  map[string]Outcome
}

func (o *outcomes) set(checkpoint string, out Outcome) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]Outcome{}
	}
	out.at = time.Now()
	for k, v := range o.m {
		if time.Since(v.at) > time.Hour {
			delete(o.m, k)
		}
	}
	o.m[checkpoint] = out
}

func (o *outcomes) get(checkpoint string) (Outcome, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	out, ok := o.m[checkpoint]
	return out, ok
}

// Outcome is what became of the restore of container id from checkpoint.
// Unknown to this agent, it is running if containerd runs a container id
// (pre-flight made sure there was none), else absent.
func (d *Destination) Outcome(ctx context.Context, id, checkpoint string) Outcome {
	if out, ok := d.outcomes.get(checkpoint); ok {
		return out
	}
	client, ctx, err := d.client(ctx)
	if err != nil {
		return Outcome{State: StateAbsent, Error: err.Error()}
	}
	defer client.Close()
	if c, err := client.LoadContainer(ctx, id); err == nil {
		if task, err := c.Task(ctx, nil); err == nil {
			if st, err := task.Status(ctx); err == nil && st.Status == containerd.Running {
				return Outcome{State: StateRunning}
			}
		}
	}
	return Outcome{State: StateAbsent}
}

// PhaseError is an error of a migration's phase on the destination.
type PhaseError struct {
	Phase string
	Err   error
}

func (e *PhaseError) Error() string { return e.Err.Error() }
func (e *PhaseError) Unwrap() error { return e.Err }

// ErrorFields tells the source which phase failed.
func (e *PhaseError) ErrorFields() map[string]string { return map[string]string{"phase": e.Phase} }

// Restore takes the container's checkpoint from r, makes its network
// namespace and restores it, running, with its RDMA state (the runtime's
// shim does that part). The stream's digest must match the one trailer
// has once r ends. Once the checkpoint is here whole, the restore goes on
// even if ctx ends (the source asks for the Outcome). A failure removes
// whatever it made; its error is a *PhaseError.
func (d *Destination) Restore(ctx context.Context, req *Request, r io.Reader, trailer http.Header) (*Result, error) {
	d.outcomes.set(req.Checkpoint, Outcome{State: StateReceiving})
	if req.Token != "" {
		// The restored container needs its images no more.
		defer func() {
			if err := d.DropPreDumps(req.Token); err != nil {
				log.G(ctx).WithError(err).Warnf("migration of %s: removing its pre-dumps", req.ID)
			}
		}()
	}
	res := &Result{}
	err := d.restore(ctx, req, r, trailer, res)
	if err != nil {
		phase := PhaseRestore
		if res.Import == 0 {
			phase = PhaseTransfer
		}
		d.outcomes.set(req.Checkpoint, Outcome{State: StateFailed, Phase: phase, Error: err.Error()})
		return nil, &PhaseError{phase, err}
	}
	d.outcomes.set(req.Checkpoint, Outcome{State: StateRunning, Result: res})
	return res, nil
}

func (d *Destination) restore(ctx context.Context, req *Request, r io.Reader, trailer http.Header, res *Result) (err error) {
	client, ctx, err := d.client(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		uctx := context.WithoutCancel(ctx)
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](uctx); uerr != nil {
				log.G(ctx).WithError(uerr).Warnf("migration of %s: cleaning up", req.ID)
			}
		}
	}()
	start := time.Now()
	in := newStream(r, 0)
	imgs, err := client.Import(ctx, in)
	if err == nil {
		// The archive may end before the stream does.
		_, err = io.Copy(io.Discard, in)
	}
	if err != nil {
		return fmt.Errorf("receiving the checkpoint of %s: %w", req.ID, err)
	}
	undo = append(undo, func(ctx context.Context) error {
		for _, i := range imgs {
			if err := client.ImageService().Delete(ctx, i.Name); err != nil {
				return err
			}
		}
		return nil
	})
	if err := checkDigest(trailer, in); err != nil {
		return fmt.Errorf("the checkpoint of %s: %w", req.ID, err)
	}
	if req.Pages {
		pctx, cancel := context.WithTimeout(ctx, pagesTimeout)
		err := d.pages.take(pctx, req.Token, finalPages)
		cancel()
		if err != nil {
			return fmt.Errorf("the memory of %s: %w", req.ID, err)
		}
	}
	res.Import, res.Bytes = time.Since(start), in.sent()
	// It is all here: the restore goes on without the source.
	d.outcomes.set(req.Checkpoint, Outcome{State: StateRestoring})
	ctx = context.WithoutCancel(ctx)
	start = time.Now()
	img, err := client.GetImage(ctx, req.Checkpoint)
	if err != nil {
		return fmt.Errorf("checkpoint %s not in what was received: %w", req.Checkpoint, err)
	}
	if req.Net != nil {
		if err := req.Net.create(ctx, d.Uplink); err != nil {
			return fmt.Errorf("network namespace of %s: %w", req.ID, err)
		}
		undo = append(undo, req.Net.remove)
	}
	c, err := client.Restore(ctx, req.ID, img, containerd.WithRestoreImage, containerd.WithRestoreSpec,
		containerd.WithRestoreRuntime, containerd.WithRestoreRW)
	if err != nil {
		return fmt.Errorf("container %s from its checkpoint: %w", req.ID, err)
	}
	undo = append(undo, func(ctx context.Context) error { return c.Delete(ctx, containerd.WithSnapshotCleanup) })
	task, err := c.NewTask(ctx, container.RestoredIO(), containerd.WithTaskCheckpoint(img))
	if err != nil {
		return fmt.Errorf("restoring container %s: %w", req.ID, err)
	}
	undo = append(undo, func(ctx context.Context) error {
		_, err := task.Delete(ctx, containerd.WithProcessKill)
		return err
	})
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("restoring container %s: %w", req.ID, err)
	}
	res.Restore, res.PID = time.Since(start), task.Pid()
	if t, err := restoreTimes(d.State, d.Namespace, req.ID); err == nil {
		res.CRIURestore, res.RDMARestore, res.Resume = t.CRIU, t.RDMA, t.Resume
	} else {
		log.G(ctx).WithError(err).Warnf("migration of %s: no breakdown of the restore", req.ID)
	}
	// The checkpoint has served; the container keeps what it needs.
	for _, i := range imgs {
		_ = client.ImageService().Delete(ctx, i.Name)
	}
	return nil
}
