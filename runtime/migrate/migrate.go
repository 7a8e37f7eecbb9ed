// SPDX-License-Identifier: Apache-2.0

// Package migrate moves a running container, RDMA state included, from
// this host to another host's MigrOS agent: pre-flight on the
// destination before anything is frozen; the container paused and
// checkpointed (its QPs left Stopped, so its peers wait); the checkpoint
// streamed to the destination, which restores it (its QPs tell their
// peers where they now are); the source removed. A failure before the
// destination runs the container gives the source back: its QPs resume,
// it thaws, and its peers carry on with it.
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
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/checkpoint"
)

// Runtime is MigrOS' containerd runtime, which an RDMA container must
// run under to move.
const Runtime = "io.containerd.migros.v1"

// Options of a migration.
type Options struct {
	Address   string // containerd's socket
	Namespace string // containerd namespace
	ID        string // the container
	To        string // the destination's agent, HOST[:PORT]
	Identity  *agent.Identity
	// Progress, if set, hears of each phase as it starts and, during the
	// transfer, of the bytes sent, about once a second.
	Progress func(Progress)
}

// Progress is where a migration is.
type Progress struct {
	Phase string
	Bytes int64   // sent so far (transfer)
	Rate  float64 // bytes per second over the transfer so far
}

func (p Progress) String() string {
	if p.Bytes == 0 {
		return p.Phase
	}
	return fmt.Sprintf("%s: %.1f MiB sent, %.1f MiB/s", p.Phase, float64(p.Bytes)/(1<<20), p.Rate/(1<<20))
}

// Phase is a step of a migration and what it took.
type Phase struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

// Report is the account of a migration.
type Report struct {
	Container string  `json:"container"`
	From      string  `json:"from"`
	To        string  `json:"to"`      // the destination's agent, as dialled
	ToHost    string  `json:"to_host"` // its host's name
	Phases    []Phase `json:"phases"`
	// BlackoutMS: from the freeze until the container runs on the
	// destination.
	BlackoutMS float64 `json:"blackout_ms"`
	TotalMS    float64 `json:"total_ms"`
	Bytes      int64   `json:"bytes"` // the checkpoint, as sent
	// FailedPhase and Error say where and why it failed; RolledBack
	// that the source runs again.
	FailedPhase string   `json:"failed_phase,omitempty"`
	Error       string   `json:"error,omitempty"`
	RolledBack  bool     `json:"rolled_back,omitempty"`
	Notes       []string `json:"notes,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Phase names, in order.
const (
	PhasePreflight  = "preflight"
	PhaseFreeze     = "freeze"
	PhaseCheckpoint = "checkpoint" // CRIU and RDMA dump
	PhaseTransfer   = "transfer"   // the destination receiving the checkpoint
	PhaseRestore    = "restore"    // the destination restoring and resuming
	PhaseCleanup    = "cleanup"    // the source removed
)

// Migrate moves container o.ID to o.To.
func Migrate(ctx context.Context, o Options) (*Report, error) {
	host, _ := os.Hostname()
	rep := &Report{Container: o.ID, From: host, To: o.To}
	start := time.Now()
	err := migrate(ctx, o, rep)
	rep.TotalMS = ms(time.Since(start))
	if err != nil {
		rep.Error = err.Error()
	}
	return rep, err
}

// run runs phase name, adding its time to rep; a failure is the phase's.
func (rep *Report) run(o Options, name string, f func() error) error {
	o.progress(Progress{Phase: name})
	t := time.Now()
	err := f()
	rep.Phases = append(rep.Phases, Phase{name, ms(time.Since(t))})
	if err != nil {
		rep.FailedPhase = name
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func migrate(ctx context.Context, o Options, rep *Report) error {
	client, err := dial(o.Address)
	if err != nil {
		rep.FailedPhase = PhasePreflight
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, o.Namespace)
	dest := agent.NewClient(o.Identity, o.To)

	var (
		c    containerd.Container
		task containerd.Task
		req  *Request
	)
	if err := rep.run(o, PhasePreflight, func() error {
		var err error
		info, err := dest.Info(ctx)
		if err != nil {
			return err
		}
		rep.ToHost = info.Host
		c, task, req, err = describe(ctx, client, o.ID, rep)
		if err != nil {
			return err
		}
		return dest.Do(ctx, http.MethodPost, "/v1/preflight", jsonBody(req), nil, nil)
	}); err != nil {
		return err
	}

	// From here on, a failure gives the source back.
	frozen := time.Now()
	var paused, netDown bool
	fail := func(err error) error {
		uctx := context.WithoutCancel(ctx)
		var errs []error
		if netDown {
			errs = append(errs, req.Net.setLinks(uctx, "up"))
		}
		if paused {
			// The shim also resumes the QPs the checkpoint left Stopped.
			errs = append(errs, task.Resume(uctx))
		}
		_ = client.ImageService().Delete(uctx, req.Checkpoint)
		if rerr := errors.Join(errs...); rerr != nil {
			return fmt.Errorf("%w; and giving the source back: %w", err, rerr)
		}
		rep.RolledBack = true
		return err
	}
	if err := rep.run(o, PhaseFreeze, func() error {
		if err := task.Pause(ctx); err != nil {
			return err
		}
		paused = true
		return nil
	}); err != nil {
		return fail(err)
	}
	if err := rep.run(o, PhaseCheckpoint, func() error {
		// Leaving it paused: the shim keeps its QPs Stopped.
		if _, err := c.Checkpoint(ctx, req.Checkpoint, containerd.WithCheckpointRuntime,
			containerd.WithCheckpointRW, containerd.WithCheckpointTask); err != nil {
			return err
		}
		if req.Net != nil {
			netDown = true
			return req.Net.setLinks(ctx, "down")
		}
		return nil
	}); err != nil {
		return fail(err)
	}

	var res Result
	t := time.Now()
	o.progress(Progress{Phase: PhaseTransfer + " and " + PhaseRestore + " (destination)"})
	if err := send(ctx, client, dest, req, &res, o.progress); err != nil {
		// The destination says which of its phases failed; without an
		// answer, the checkpoint did not get there.
		rep.FailedPhase = PhaseTransfer
		var se *agent.StatusError
		if errors.As(err, &se) && se.Fields["phase"] != "" {
			rep.FailedPhase = se.Fields["phase"]
		}
		rep.Phases = append(rep.Phases, Phase{rep.FailedPhase, ms(time.Since(t))})
		return fail(fmt.Errorf("%s: %w", rep.FailedPhase, err))
	}
	rep.Phases = append(rep.Phases, Phase{PhaseTransfer, ms(res.Import)}, Phase{PhaseRestore, ms(res.Restore)})
	rep.Bytes = res.Bytes
	rep.BlackoutMS = ms(time.Since(frozen))

	// The container runs on the destination: the source goes.
	return rep.run(o, PhaseCleanup, func() error {
		uctx := context.WithoutCancel(ctx)
		var errs []error
		if _, err := task.Delete(uctx, containerd.WithProcessKill); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, c.Delete(uctx, containerd.WithSnapshotCleanup))
		errs = append(errs, client.ImageService().Delete(uctx, req.Checkpoint))
		if req.Net != nil {
			errs = append(errs, req.Net.remove(uctx))
		}
		return errors.Join(errs...)
	})
}

// describe is what the destination needs to know of container id.
func describe(ctx context.Context, client *containerd.Client, id string, rep *Report) (containerd.Container, containerd.Task, *Request, error) {
	c, err := client.LoadContainer(ctx, id)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("container %s: %w", id, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("container %s: %w", id, err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	if st.Status != containerd.Running {
		return nil, nil, nil, fmt.Errorf("%w: container %s is %s, not running", errdefs.ErrFailedPrecondition, id, st.Status)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	req := &Request{
		ID:         id,
		Checkpoint: fmt.Sprintf("localhost/migros/migrate/%s:%d", id, time.Now().UnixNano()),
		Image:      info.Image,
		Runtime:    info.Runtime.Name,
		RxeVersion: agent.HostInfo().RxeVersion,
	}
	if req.IDs, err = checkpoint.HeldIDs(int(task.Pid())); err != nil {
		return nil, nil, nil, err
	}
	if len(req.IDs) > 0 && req.Runtime != Runtime {
		return nil, nil, nil, fmt.Errorf("%w: container %s uses RDMA and runs under %s: only %s checkpoints RDMA state",
			errdefs.ErrFailedPrecondition, id, req.Runtime, Runtime)
	}
	req.Memory = cgroupMemory(int(task.Pid()))
	if name := specNetns(spec); name != "" {
		if req.Net, err = readNetns(ctx, name); err != nil {
			return nil, nil, nil, err
		}
	} else if hostNetwork(spec) {
		rep.Notes = append(rep.Notes, "the container uses the host's network: its TCP connections do not move")
	}
	return c, task, req, nil
}

// cgroupMemory is what process pid's cgroup (v2) uses, 0 if unknown.
func cgroupMemory(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return 0
	}
	_, path, ok := strings.Cut(strings.TrimSpace(string(b)), "::")
	if !ok {
		return 0
	}
	v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", path, "memory.current"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
	return n
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return strings.NewReader(string(b))
}

func (o Options) progress(p Progress) {
	if o.Progress != nil {
		o.Progress(p)
	}
}

// send streams the checkpoint to the destination, which restores it,
// telling progress what it sent.
func send(ctx context.Context, client *containerd.Client, dest *agent.Client, req *Request, res *Result,
	progress func(Progress)) error {
	hdr, err := json.Marshal(req)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(client.Export(ctx, pw, archive.WithImage(client.ImageService(), req.Checkpoint),
			archive.WithSkipDockerManifest()))
	}()
	defer pr.CloseWithError(syscall.ECANCELED)
	body := &countingReader{r: pr}
	done := make(chan struct{})
	defer close(done)
	go func() {
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				n := body.sent()
				progress(Progress{Phase: PhaseTransfer, Bytes: n, Rate: float64(n) / time.Since(start).Seconds()})
			}
		}
	}()
	return dest.Do(ctx, http.MethodPost, "/v1/restore", body, http.Header{requestHeader: {string(hdr)}}, res)
}
