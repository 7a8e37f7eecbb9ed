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
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/checkpoint"
	"github.com/migros/migros/runtime/install"
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
	// Progress, if set, hears of each phase as it starts and, while it
	// sends (pre-copy, checkpoint, transfer), of the bytes sent, about
	// once a second.
	Progress func(Progress)
	// Bandwidth caps each stream to the destination (pre-dumps, memory,
	// the checkpoint), in bytes per second (0: no cap).
	Bandwidth int64
	// PreCopy is how many rounds of pre-copy come before the freeze:
	// each pre-dumps the running container's memory (only what it wrote
	// since the round before) and sends it to the destination, so that
	// the final dump, frozen, has less to take.
	PreCopy int
	// PageServer sends the final dump's memory to the destination as
	// CRIU dumps it (to a CRIU page server there), ahead of the rest of
	// the checkpoint, instead of in it.
	PageServer bool
	// Paths of MigrOS' installation (CRIU's plugin), for pre-dumps
	// (default: beside the running binary).
	Paths install.Paths
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

// Phase is a step of a migration and what it took; or, with Within, a
// part of step Within.
type Phase struct {
	Name   string  `json:"name"`
	MS     float64 `json:"ms"`
	Within string  `json:"within,omitempty"`
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
	// StreamedBytes of Bytes went ahead, to the page server.
	StreamedBytes int64 `json:"streamed_bytes,omitempty"`
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
	PhasePreCopy    = "pre-copy" // each round: pre-dump and send, running
	PhaseFreeze     = "freeze"
	PhaseCheckpoint = "checkpoint" // CRIU and RDMA dump
	PhaseTransfer   = "transfer"   // the destination receiving the checkpoint
	PhaseRestore    = "restore"    // the destination restoring and resuming
	PhaseCleanup    = "cleanup"    // the source removed
)

// Abort gives back a container that a migration left frozen when it
// could not tell whether the destination runs it (see Report.Error):
// its network links come up, it thaws (its QPs resume), its migration's
// checkpoints go. Only for a container that does not run on the
// destination.
func Abort(ctx context.Context, address, namespace, id string) error {
	client, err := dial(address)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, namespace)
	c, err := client.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return err
	}
	if st.Status != containerd.Paused {
		return fmt.Errorf("%w: container %s is %s: no migration left it frozen", errdefs.ErrFailedPrecondition, id, st.Status)
	}
	spec, err := c.Spec(ctx)
	if err != nil {
		return err
	}
	var errs []error
	if name := specNetns(spec); name != "" {
		n, err := readNetns(ctx, name)
		if err == nil {
			err = n.setLinks(ctx, "up")
		}
		errs = append(errs, err)
	}
	errs = append(errs, task.Resume(ctx))
	// QPs stopped outside the shim (Redirty, by a migration killed before
	// its checkpoint) resume too; the shim resumed those it stopped.
	errs = append(errs, checkpoint.Resume(int(task.Pid())))
	imgs, err := client.ImageService().List(ctx)
	errs = append(errs, err)
	for _, i := range imgs {
		if strings.HasPrefix(i.Name, checkpointPrefix+id+":") {
			errs = append(errs, client.ImageService().Delete(ctx, i.Name))
		}
	}
	return errors.Join(errs...)
}

// checkpointPrefix begins the names of migrations' checkpoints.
const checkpointPrefix = "localhost/migros/migrate/"

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
	rep.Phases = append(rep.Phases, Phase{Name: name, MS: ms(time.Since(t))})
	if err != nil {
		rep.FailedPhase = name
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// part adds part name of phase within, which took d.
func (rep *Report) part(within, name string, d time.Duration) {
	rep.Phases = append(rep.Phases, Phase{Name: name, MS: ms(d), Within: within})
}

func migrate(ctx context.Context, o Options, rep *Report) (retErr error) {
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
		if o.PreCopy > 0 || o.PageServer {
			req.Token = strings.ReplaceAll(path.Base(req.Checkpoint), ":", "-")
			req.Pages = o.PageServer
		}
		if o.PreCopy > 0 && !o.PageServer {
			// Streamed, the pre-dumps' pages are not kept here.
			if err := checkPreDumpRoom(req.Memory); err != nil {
				return fmt.Errorf("%w: pre-copy on %s: %w", errdefs.ErrFailedPrecondition, rep.From, err)
			}
		}
		return dest.Do(ctx, http.MethodPost, "/v1/preflight", jsonBody(req), nil, nil)
	}); err != nil {
		return err
	}

	if o.PreCopy > 0 {
		defer os.RemoveAll(filepath.Join(PreDumpRoot, req.Token))
		paths := o.Paths
		if paths == (install.Paths{}) {
			paths = install.Beside()
		}
		for i := 1; i <= o.PreCopy; i++ {
			if err := rep.run(o, PhasePreCopy, func() error {
				parent := "" // each round on top of the one before
				if i > 1 {
					parent = "../" + filepath.Base(preDumpDir(req.Token, i-1))
				}
				dir := preDumpDir(req.Token, i)
				if o.PageServer {
					return streamPreDump(ctx, dest, paths, req, i, o)
				}
				if err := preDump(ctx, paths, o.Namespace, o.ID, dir, parent, ""); err != nil {
					return err
				}
				return sendPreDump(ctx, dest, req.Token, i, dir, o)
			}); err != nil {
				dropPreDumps(ctx, dest, req.Token)
				return err
			}
		}
	}

	var pages *pageStream
	if o.PageServer {
		var err error
		if pages, err = streamPages(ctx, dest, req, o); err != nil {
			rep.FailedPhase = PhaseCheckpoint
			if req.Token != "" {
				dropPreDumps(ctx, dest, req.Token)
			}
			return fmt.Errorf("%s: %w", PhaseCheckpoint, err)
		}
		defer pages.Close()
	}

	// From here on, a failure gives the source back; if this command
	// dies, the host's agent does (Recover). Kept only when it cannot be
	// told whether the destination runs the container: the agent asks on.
	forget, err := writeJournal(JournalRoot, Journal{Address: o.Address, Namespace: o.Namespace, ID: o.ID,
		To: o.To, Checkpoint: req.Checkpoint, Token: req.Token})
	if err != nil {
		rep.FailedPhase = PhaseFreeze
		if req.Token != "" {
			dropPreDumps(ctx, dest, req.Token)
		}
		return fmt.Errorf("%s: %w", PhaseFreeze, err)
	}
	defer func() {
		if unknown := (*unknownOutcome)(nil); !errors.As(retErr, &unknown) {
			forget()
		}
	}()
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
		if req.Token != "" {
			dropPreDumps(uctx, dest, req.Token)
		}
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
	var img containerd.Image
	if err := rep.run(o, PhaseCheckpoint, func() error {
		var opts []containerd.CheckpointOpts
		if o.PreCopy > 0 {
			// Only what changed since the last pre-dump, and all the
			// registered memory, which the NIC writes unseen.
			if _, err := checkpoint.Redirty(int(task.Pid())); err != nil {
				return errors.Join(err, checkpoint.Resume(int(task.Pid())))
			}
			// Before WithCheckpointTask, which sends the options as
			// they are when it runs.
			opts = append(opts, withParent(preDumpDir(req.Token, o.PreCopy)))
		}
		opts = append(opts, containerd.WithCheckpointRuntime, containerd.WithCheckpointRW, containerd.WithCheckpointTask)
		// Leaving it paused: the shim keeps its QPs Stopped.
		var err error
		if pages != nil {
			defer tick(o, PhaseCheckpoint, pages.sent)()
		}
		if img, err = c.Checkpoint(ctx, req.Checkpoint, opts...); err != nil {
			if pages != nil {
				// CRIU says only that it failed; why may be the stream.
				if perr := pages.Close(); perr != nil {
					err = fmt.Errorf("%w; %w", err, perr)
				}
			}
			return err
		}
		if pages != nil {
			if err := pages.Wait(ctx); err != nil {
				return err
			}
			rep.StreamedBytes = pages.sent()
		}
		if req.Net != nil {
			netDown = true
			return req.Net.setLinks(ctx, "down")
		}
		return nil
	}); err != nil {
		return fail(err)
	}

	if t, err := dumpTimes(ctx, client, img); err != nil {
		rep.Notes = append(rep.Notes, "no breakdown of the checkpoint: "+err.Error())
	} else {
		rep.part(PhaseCheckpoint, PartCRIUDump, t.CRIU)
		rep.part(PhaseCheckpoint, PartRDMADump, t.RDMA)
		rep.part(PhaseCheckpoint, PartMemoryDump, t.Memory)
	}

	var res Result
	t := time.Now()
	o.progress(Progress{Phase: PhaseTransfer + " and " + PhaseRestore + " (destination)"})
	if err := send(ctx, dest, req, exportCheckpoint(ctx, client, req.Checkpoint), &res, o); err != nil {
		rep.Phases = append(rep.Phases, Phase{Name: failedPhase(err), MS: ms(time.Since(t))})
		var unknown *unknownOutcome
		if errors.As(err, &unknown) {
			// It may run there: the source must not run too.
			rep.FailedPhase = PhaseRestore
			return fmt.Errorf("%s: %w", rep.FailedPhase, err)
		}
		rep.FailedPhase = failedPhase(err)
		return fail(fmt.Errorf("%s: %w", rep.FailedPhase, err))
	}
	rep.Phases = append(rep.Phases, Phase{Name: PhaseTransfer, MS: ms(res.Import)}, Phase{Name: PhaseRestore, MS: ms(res.Restore)})
	if res.CRIURestore > 0 {
		rep.part(PhaseRestore, PartCRIURestore, res.CRIURestore)
		rep.part(PhaseRestore, PartRDMARestore, res.RDMARestore)
		rep.part(PhaseRestore, PartResume, res.Resume)
	}
	rep.Bytes = res.Bytes + rep.StreamedBytes
	rep.BlackoutMS = ms(time.Since(frozen))

	// The container runs on the destination: the source goes.
	return rep.run(o, PhaseCleanup, func() error {
		return removeSource(context.WithoutCancel(ctx), client, c, task, req.Checkpoint, req.Net)
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
		Checkpoint: fmt.Sprintf("%s%s:%d", checkpointPrefix, id, time.Now().UnixNano()),
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
// telling o.Progress what it sent. If the answer is lost once the
// destination had the whole checkpoint, it asks the destination what
// became of it; an error is then a *PhaseError from the destination, or
// an *unknownOutcome if it cannot tell.
func send(ctx context.Context, dest *agent.Client, req *Request, ckpt io.ReadCloser, res *Result, o Options) error {
	defer ckpt.Close()
	corruptAt, err := faultFromEnv()
	if err != nil {
		return err
	}
	hdr, err := json.Marshal(req)
	if err != nil {
		return err
	}
	body := newStream(ckpt, o.Bandwidth)
	body.corruptAt = corruptAt
	stop := tick(o, PhaseTransfer, body.sent)
	trailer := http.Header{digestTrailer: nil}
	sum := &digestOnEOF{stream: body, trailer: trailer}
	err = dest.Send(ctx, http.MethodPost, "/v1/restore", sum, http.Header{requestHeader: {string(hdr)}}, trailer, res)
	stop()
	var se *agent.StatusError
	if err == nil || errors.As(err, &se) || !body.whole() {
		return phaseError(err)
	}
	// No answer (the connection went, or this command was interrupted),
	// but the destination had it all and restores it without us: ask,
	// even if interrupted, for the source must not run twice.
	o.progress(Progress{Phase: PhaseRestore + " (asking the destination what became of it)"})
	out, qerr := awaitOutcome(context.WithoutCancel(ctx), dest, req)
	switch {
	case qerr != nil:
		return &unknownOutcome{id: req.ID, err: err, query: qerr}
	case out.State == StateRunning:
		if out.Result != nil {
			*res = *out.Result
		}
		return nil
	case out.State == StateFailed:
		return &PhaseError{Phase: out.Phase, Err: fmt.Errorf("%w (the answer was lost: %w)", errors.New(out.Error), err)}
	}
	return &PhaseError{Phase: PhaseTransfer, Err: fmt.Errorf("%w (the destination has no such restore)", err)}
}

// tick tells o.Progress, about once a second until stopped, how much
// phase has sent.
func tick(o Options, phase string, sent func() int64) (stop func()) {
	done := make(chan struct{})
	go func() {
		start := time.Now()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n := sent()
				o.progress(Progress{Phase: phase, Bytes: n, Rate: float64(n) / time.Since(start).Seconds()})
			}
		}
	}()
	return func() { close(done) }
}

// streamPages opens a page server on dest for req's final dump (on top of
// its last pre-dump, if any) and asks the container's shim to have CRIU
// send its pages there.
func streamPages(ctx context.Context, dest *agent.Client, req *Request, o Options) (*pageStream, error) {
	parent := ""
	if o.PreCopy > 0 {
		parent = filepath.Base(preDumpDir(req.Token, o.PreCopy))
	}
	p, err := openPageStream(ctx, dest, req.Token, finalPages, parent, o.Bandwidth)
	if err != nil {
		return nil, fmt.Errorf("page server on the destination: %w", err)
	}
	if p.withdraw, err = checkpoint.SetPageServer(checkpoint.PageServerRoot, o.Namespace, o.ID,
		checkpoint.PageServer{Address: p.Addr(), Dir: pagesDir(req.Token)}); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// exportCheckpoint is checkpoint's OCI archive, as containerd writes it,
// its blobs read from the content store in large reads.
func exportCheckpoint(ctx context.Context, client *containerd.Client, checkpoint string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		store := readAheadStore{client.ContentStore()}
		pw.CloseWithError(archive.Export(ctx, store, pw, archive.WithImage(client.ImageService(), checkpoint),
			archive.WithSkipDockerManifest()))
	}()
	return pr
}

// phaseError turns the destination's answer into a *PhaseError naming
// where it failed; without an answer, the checkpoint did not get there.
func phaseError(err error) error {
	if err == nil {
		return nil
	}
	phase := PhaseTransfer
	var se *agent.StatusError
	if errors.As(err, &se) && se.Fields["phase"] != "" {
		phase = se.Fields["phase"]
	}
	return &PhaseError{Phase: phase, Err: err}
}

// failedPhase is the phase an error of send names.
func failedPhase(err error) string {
	var pe *PhaseError
	if errors.As(err, &pe) && pe.Phase != "" {
		return pe.Phase
	}
	return PhaseRestore
}

// unknownOutcome: the destination had the whole checkpoint, did not
// answer, and cannot be asked; the container may run there.
type unknownOutcome struct {
	id         string
	err, query error
}

func (u *unknownOutcome) Error() string {
	return fmt.Sprintf("the destination received the whole checkpoint and did not answer (%v), nor say since what "+
		"became of it (%v): the container may run there, so the source stays frozen, and this host's agent "+
		"asks the destination on; if it does not run there, give it back now with `migros migrate %s --abort`",
		u.err, u.query, u.id)
}

func (u *unknownOutcome) Unwrap() error { return u.err }

// How long a source asks a destination that lost its answer.
const (
	outcomeUnreachable = time.Minute      // unanswered
	outcomeBusy        = 10 * time.Minute // still restoring
)

// awaitOutcome asks the destination what became of req's restore until
// it is done; an error if it cannot be asked.
func awaitOutcome(ctx context.Context, dest *agent.Client, req *Request) (Outcome, error) {
	q := url.Values{"id": {req.ID}, "checkpoint": {req.Checkpoint}}
	start, lastAnswer := time.Now(), time.Now()
	for {
		var out Outcome
		err := dest.Do(ctx, http.MethodGet, "/v1/outcome?"+q.Encode(), nil, nil, &out)
		if err == nil {
			lastAnswer = time.Now()
			if out.State != StateReceiving && out.State != StateRestoring {
				return out, nil
			}
		}
		switch {
		case time.Since(lastAnswer) > outcomeUnreachable:
			return Outcome{}, err
		case time.Since(start) > outcomeBusy:
			return Outcome{}, fmt.Errorf("still %s after %v", out.State, outcomeBusy)
		}
		select {
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
