// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/container"
	"github.com/migros/migros/runtime/install"
	"github.com/migros/migros/runtime/migrate"
)

// migrateCmd moves a container to another host's agent and reports each
// phase's time.
func migrateCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ExitOnError)
	to := fs.String("to", "", "the destination's agent, HOST[:PORT] (required)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	address := fs.String("address", container.DefaultAddress, "containerd's socket")
	ns := fs.String("namespace", "default", "containerd namespace")
	pki := fs.String("pki", install.Beside().PKIDir(), "this host's agent identity")
	bw := fs.Float64("bandwidth", 0, "cap each stream to the destination (pre-dumps, memory, checkpoint) at this many MiB/s (0: no cap)")
	preCopy := fs.Int("pre-copy", 0, "rounds of pre-copy (memory sent while the container runs) before the freeze")
	pageServer := fs.Bool("page-server", true, "send the final dump's memory to the destination as CRIU dumps it (a page server there)")
	abort := fs.Bool("abort", false, "give back a container a migration left frozen, not knowing whether the destination runs it")
	// Flags may follow the container's name.
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	fs.Parse(args)
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	}
	if *abort && id != "" {
		return migrate.Abort(ctx, *address, *ns, id)
	}
	if id == "" || *to == "" {
		return errors.New("usage: migros migrate CONTAINER --to HOST[:PORT] [--pre-copy N] [--page-server=false] [--bandwidth MIB/S] [--json]\n" +
			"       migros migrate CONTAINER --abort")
	}
	ident, err := agent.LoadIdentity(*pki)
	if err != nil {
		return err
	}
	o := migrate.Options{Address: *address, Namespace: *ns, ID: id, To: *to, Identity: ident,
		Bandwidth: int64(*bw * (1 << 20)), PreCopy: *preCopy, PageServer: *pageServer, Paths: install.Beside()}
	// Progress goes to stderr, the report (text or JSON) to stdout.
	o.Progress = func(p migrate.Progress) { fmt.Fprintf(os.Stderr, "migrate %s: %v\n", id, p) }
	rep, err := migrate.Migrate(ctx, o)
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil {
			return jerr
		}
	} else {
		printReport(rep)
	}
	return err
}

func printReport(r *migrate.Report) {
	fmt.Printf("container %s: %s -> %s (%s)\n", r.Container, r.From, r.ToHost, r.To)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, p := range r.Phases {
		indent := "  "
		if p.Within != "" {
			indent = "    " // a part of the phase above
		}
		fmt.Fprintf(w, "%s%s\t%10.1f ms\n", indent, p.Name, p.MS)
	}
	w.Flush()
	if r.Error == "" {
		fmt.Printf("blackout %.1f ms, total %.1f ms, checkpoint %.1f MiB", r.BlackoutMS, r.TotalMS, float64(r.Bytes)/(1<<20))
		if r.StreamedBytes > 0 {
			fmt.Printf(" (%.1f MiB of memory streamed as dumped)", float64(r.StreamedBytes)/(1<<20))
		}
		fmt.Println()
	} else {
		state := "the source was NOT given back"
		switch {
		case r.RolledBack:
			state = "the source runs again"
		case r.FailedPhase == migrate.PhasePreflight || r.FailedPhase == migrate.PhasePreCopy:
			state = "nothing was frozen: the container runs on the source"
		case r.FailedPhase == migrate.PhaseCleanup:
			state = "the container runs on the destination; the source's leftovers need removing"
		}
		fmt.Printf("FAILED in %s (%s): %s\n", r.FailedPhase, state, r.Error)
	}
	for _, n := range r.Notes {
		fmt.Printf("note: %s\n", n)
	}
}
