// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/checkpoint"
)

// From the freeze on, migros migrate alone can give the source back or
// remove it. Killed outright (SIGKILL, a crash), it would leave the
// container frozen; so it keeps a journal entry while it is past the
// freeze, and the host's agent settles the migrations whose command
// died (Recover).

// JournalRoot holds the journal entries of the migrations from this
// host past their freeze, one per container: NAMESPACE/ID.json.
const JournalRoot = "/run/migros/migrate"

// Journal is the entry of a migration past its freeze.
type Journal struct {
	PID int `json:"pid"` // migros migrate's
	// Start is when that process started (clock ticks after boot), so
	// that another process that got its PID is not taken for it.
	Start      uint64 `json:"start"`
	Address    string `json:"address"` // containerd's socket
	Namespace  string `json:"namespace"`
	ID         string `json:"id"`
	To         string `json:"to"` // the destination's agent
	Checkpoint string `json:"checkpoint"`
	Token      string `json:"token,omitempty"`
}

// journalPath is where the entry of container id of namespace lies.
func journalPath(root, namespace, id string) (string, error) {
	for _, n := range []string{namespace, id} {
		if n == "" || n != filepath.Base(n) || strings.HasPrefix(n, ".") {
			return "", fmt.Errorf("%w: journal entry %q/%q", errdefs.ErrInvalidArgument, namespace, id)
		}
	}
	return filepath.Join(root, namespace, id+".json"), nil
}

// writeJournal records j, made by this process, under root; forget
// removes it.
func writeJournal(root string, j Journal) (forget func(), err error) {
	j.PID = os.Getpid()
	if j.Start, err = procStart(j.PID); err != nil {
		return nil, err
	}
	path, err := journalPath(root, j.Namespace, j.ID)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(j)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// Whole or not at all: a reader never sees half an entry.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	return func() { os.Remove(path) }, nil
}

// readJournals are the entries under root.
func readJournals(root string) ([]Journal, error) {
	paths, err := filepath.Glob(filepath.Join(root, "*", "*.json"))
	if err != nil {
		return nil, err
	}
	var js []Journal
	var errs []error
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var j Journal
		if err := json.Unmarshal(b, &j); err != nil {
			errs = append(errs, fmt.Errorf("journal entry %s: %w", p, err))
			continue
		}
		if want, err := journalPath(root, j.Namespace, j.ID); err != nil || want != p {
			errs = append(errs, fmt.Errorf("journal entry %s names container %s/%s", p, j.Namespace, j.ID))
			continue
		}
		js = append(js, j)
	}
	return js, errors.Join(errs...)
}

// alive says whether the process that made j still runs.
func (j Journal) alive() bool {
	start, err := procStart(j.PID)
	return err == nil && start == j.Start
}

// procStart is when process pid started, in clock ticks after boot
// (/proc/PID/stat's 22nd field).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStart(b)
}

func parseStart(stat []byte) (uint64, error) {
	// The command, 2nd, is in parentheses and may hold anything.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command in /proc/PID/stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	const start = 22 - 3 // fields after the command, from the 3rd
	if len(f) <= start {
		return 0, errors.New("too few fields in /proc/PID/stat")
	}
	return strconv.ParseUint(f[start], 10, 64)
}

// Recover settles, now and every interval until ctx ends, the
// migrations from this host whose migros migrate died past the freeze:
// it asks each one's destination, as this host (id), what became of the
// restore. Running there: the source is removed, as the migration would
// have. Failed there, or unknown: the source is given back (Abort) and
// the destination drops the migration's pre-dumps. No answer, or still
// restoring: it asks again the next time.
func Recover(ctx context.Context, id *agent.Identity, interval time.Duration) {
	periodically(ctx, interval, func() {
		js, err := readJournals(JournalRoot)
		if err != nil {
			log.G(ctx).WithError(err).Warn("reading the migrations' journal")
		}
		for _, j := range js {
			if j.alive() {
				continue
			}
			l := log.G(ctx).WithField("container", j.Namespace+"/"+j.ID)
			if done, err := settle(ctx, id, j); err != nil {
				l.WithError(err).Warn("settling a migration whose migros migrate died")
			} else if done != "" {
				l.Infof("settled a migration whose migros migrate died: %s", done)
			}
		}
	})
}

// settle settles j's migration and forgets it, saying what it did; ""
// and no error if it must wait.
func settle(ctx context.Context, id *agent.Identity, j Journal) (string, error) {
	dest := agent.NewClient(id, j.To)
	var out Outcome
	q := url.Values{"id": {j.ID}, "checkpoint": {j.Checkpoint}}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := dest.Do(qctx, http.MethodGet, "/v1/outcome?"+q.Encode(), nil, nil, &out)
	cancel()
	if err != nil {
		return "", fmt.Errorf("asking %s what became of it: %w", j.To, err)
	}
	var done string
	switch out.State {
	case StateReceiving, StateRestoring:
		return "", nil
	case StateRunning:
		done = "it runs on " + j.To + ": the source is removed"
		err = removeSourceOf(ctx, j)
	default:
		done = "it does not run on " + j.To + ": the source is given back"
		err = Abort(ctx, j.Address, j.Namespace, j.ID)
		if errdefs.IsFailedPrecondition(err) || errdefs.IsNotFound(err) {
			// Killed before the freeze took, or the container is gone.
			done, err = "nothing to give back: "+err.Error(), nil
		}
		if j.Token != "" {
			dropPreDumps(ctx, dest, j.Token)
		}
	}
	if err != nil {
		return "", err
	}
	// A request to the shim the dump never took, and the source's own
	// pre-dumps.
	_, _ = checkpoint.TakePageServer(checkpoint.PageServerRoot, j.Namespace, j.ID)
	if j.Token != "" {
		os.RemoveAll(filepath.Join(PreDumpRoot, j.Token))
	}
	if path, err := journalPath(JournalRoot, j.Namespace, j.ID); err == nil {
		os.Remove(path)
	}
	return done, nil
}

// removeSourceOf removes the frozen source of j's migration, which runs
// on the destination.
func removeSourceOf(ctx context.Context, j Journal) error {
	client, err := dial(j.Address)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, j.Namespace)
	c, err := client.LoadContainer(ctx, j.ID)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var net *Netns
	if spec, err := c.Spec(ctx); err == nil {
		if name := specNetns(spec); name != "" {
			net = &Netns{Name: name}
		}
	}
	task, err := c.Task(ctx, nil)
	if err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	return removeSource(ctx, client, c, task, j.Checkpoint, net)
}

// removeSource removes the source of a migration, the container c (and
// its task, if it has one still) frozen, its checkpoint and its network
// namespace (if net), once the destination runs it.
func removeSource(ctx context.Context, client *containerd.Client, c containerd.Container, task containerd.Task,
	ckpt string, net *Netns) error {
	var errs []error
	if task != nil {
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.Delete(ctx, containerd.WithSnapshotCleanup))
	if err := client.ImageService().Delete(ctx, ckpt); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, err)
	}
	if net != nil {
		errs = append(errs, net.remove(ctx))
	}
	return errors.Join(errs...)
}
