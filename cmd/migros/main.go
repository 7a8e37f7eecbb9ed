// SPDX-License-Identifier: Apache-2.0

// Command migros is the MigrOS command line.
//
//	migros checkpoint --pid P --images DIR [--leave-running]
//	                                      checkpoint an RDMA process with CRIU
//	migros restore --images DIR           restore it, RDMA state included
//	migros inspect DIR                    the RDMA objects of a checkpoint
//	migros cdi [--output FILE]            a CDI spec of the host's RDMA devices
//	migros ids [--apply]                  the host's ID range policy
//	migros agent [--listen ADDR]          serve migrations to other hosts (mutual TLS)
//	migros agent init --out DIR NAME=IP.. the agents' CA and each host's identity
//	migros agent ping HOST[:PORT]         ask another host's agent about its host
//	migros migrate ID --to HOST[:PORT]    move a running container to that host's agent
//
// It also drives the migration protocol of our rdma_rxe on a running
// process:
//
//	migros rxe list   --pid P [--json]    the process' QPs and their state
//	migros rxe stop   --pid P [--qpn N]   stop its QPs (peers pause), or one
//	migros rxe resume --pid P [--qpn N]   resume its Stopped QPs, or one
//	migros rxe dump   --pid P             every RDMA object of the process (JSON)
//	migros rxe check-ids [--device D] ID...  are these IDs free on this host?
//
// A QP may also be named by its uverbs handle (--qp H), which is per
// context: with --fd F (the context the process has open on fd F) when
// the process has several.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"

	"github.com/migros/migros/rdma"
)

const usage = `usage: migros checkpoint --pid PID --images DIR [--leave-running]
       migros restore --images DIR
       migros inspect DIR
       migros cdi [--output FILE|-]
       migros ids [--config FILE] [--apply]
       migros agent [--listen ADDR] [--pki DIR]
       migros agent init --out DIR NAME=IP[,IP...]...
       migros agent ping [--pki DIR] HOST[:PORT]
       migros migrate CONTAINER --to HOST[:PORT] [--json]
       migros rxe list|stop|resume|dump --pid PID [--qpn QPN | --qp HANDLE [--fd FD]] [--json]
       migros rxe check-ids [--device /dev/infiniband/uverbsN] ID...
                 ID: qp:QPN, mr:LKEY, mw:RKEY, srq:NUM or ah:NUM
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	// A hangup too: a migration whose terminal goes gives its container
	// back rather than leave it frozen.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	name, args := os.Args[1], os.Args[2:]
	var err error
	switch name {
	case "checkpoint":
		err = checkpointCmd(ctx, args)
	case "cdi":
		err = cdiCmd(args)
	case "migrate":
		err = migrateCmd(ctx, args)
	case "agent":
		err = agentCmd(ctx, args)
	case "ids":
		err = idsCmd(args)
	case "inspect":
		err = inspect(args)
	case "restore":
		err = restoreCmd(ctx, args)
	case "rxe":
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		name, err = "rxe "+args[0], rxe(args[0], args[1:])
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "migros %s: %v\n", name, err)
		os.Exit(1)
	}
}

// contextQPs is what list reports for one uverbs context.
type contextQPs struct {
	Path string        `json:"path"`
	FD   int           `json:"fd"`
	QPs  []rdma.QPInfo `json:"qps"`
}

// errNotFree makes check-ids exit 1 after reporting.
var errNotFree = errors.New("some IDs are not free")

// checkIDs reports whether IDs are free on an rxe device, as a restore or
// a migration pre-flight needs them to be.
func checkIDs(args []string) error {
	fs := flag.NewFlagSet("check-ids", flag.ExitOnError)
	device := fs.String("device", "", "uverbs device file (default: the only one)")
	fs.Parse(args)
	if fs.NArg() == 0 {
		return errors.New("no ID given (qp:QPN, mr:LKEY, mw:RKEY, srq:NUM, ah:NUM)")
	}
	ids := make([]rdma.ID, fs.NArg())
	for i, a := range fs.Args() {
		id, err := rdma.ParseID(a)
		if err != nil {
			return err
		}
		ids[i] = id
	}
	if *device == "" {
		devs, _ := filepath.Glob("/dev/infiniband/uverbs*")
		if len(devs) != 1 {
			return fmt.Errorf("%d uverbs devices here (%v): choose one with --device", len(devs), devs)
		}
		*device = devs[0]
	}
	c, err := rdma.OpenDevice(*device)
	if err != nil {
		return err
	}
	defer c.Close()
	errs, err := c.CheckIDs(ids)
	if err != nil {
		return err
	}
	var res error
	for i, id := range ids {
		if errs[i] != nil {
			fmt.Println(errs[i])
			res = errNotFree
		} else {
			fmt.Printf("%v: free\n", id)
		}
	}
	return res
}

func rxe(cmd string, args []string) error {
	if cmd == "check-ids" {
		return checkIDs(args)
	}
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	pid := fs.Int("pid", 0, "process whose RDMA contexts to act on")
	qp := fs.Int("qp", -1, "only the QP with this uverbs handle (in the context of --fd)")
	qpn := fs.String("qpn", "", "only the QP with this number")
	fd := fs.Int("fd", -1, "only the context the process has open on this file descriptor")
	asJSON := fs.Bool("json", false, "print JSON (list)")
	fs.Parse(args)
	if *pid <= 0 {
		return errors.New("--pid is required")
	}
	all, err := rdma.OpenPID(*pid)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range all {
			c.Close()
		}
	}()
	if len(all) == 0 {
		return fmt.Errorf("process %d has no uverbs device open", *pid)
	}
	ctxs, handle, err := selectQP(all, func(c *rdma.Context) int { return c.FD }, *fd, *qp, *qpn)
	if err != nil {
		return fmt.Errorf("process %d: %w", *pid, err)
	}
	*qp = handle
	switch cmd {
	case "list":
		return list(ctxs, *asJSON)
	case "dump":
		var out []*rdma.ContextDump
		for _, c := range ctxs {
			d, err := c.Dump()
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	case "stop", "resume":
		total := 0
		for _, c := range ctxs {
			var n int
			switch {
			case *qp >= 0 && cmd == "stop":
				n, err = 1, c.StopQP(uint32(*qp))
			case *qp >= 0:
				n, err = 1, c.ResumeQP(uint32(*qp))
			case cmd == "stop":
				n, err = c.Stop()
			default:
				n, err = c.Resume()
			}
			if err != nil {
				return err
			}
			total += n
		}
		fmt.Printf("%s %d QPs of process %d\n", map[string]string{"stop": "stopped", "resume": "resumed"}[cmd], total, *pid)
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// qpLister is what selectQP needs of a context.
type qpLister interface {
	QPs() ([]rdma.QPRef, error)
}

// selectQP narrows a process' contexts to those a command acts on: the
// one on fd (if >= 0), the one holding the QP numbered qpn (if set),
// whose handle it returns, or the one a handle (>= 0) is taken in,
// which must be the only one. handle is -1 for every QP.
func selectQP[C qpLister](ctxs []C, fdOf func(C) int, wantFD, handle int, qpn string) ([]C, int, error) {
	if wantFD >= 0 {
		var on []C
		for _, c := range ctxs {
			if fdOf(c) == wantFD {
				on = append(on, c)
			}
		}
		if len(on) == 0 {
			return nil, -1, fmt.Errorf("no RDMA context on fd %d", wantFD)
		}
		ctxs = on
	}
	if qpn != "" {
		if handle >= 0 {
			return nil, -1, errors.New("--qp and --qpn both name a QP: give one")
		}
		n, err := strconv.ParseUint(qpn, 0, 24)
		if err != nil {
			return nil, -1, fmt.Errorf("--qpn %q: not a QP number", qpn)
		}
		for _, c := range ctxs {
			refs, err := c.QPs()
			if err != nil {
				return nil, -1, err
			}
			for _, r := range refs {
				if uint64(r.QPN) == n {
					return []C{c}, int(r.Handle), nil
				}
			}
		}
		return nil, -1, fmt.Errorf("%w: no QP %#x", rdma.ErrNoObject, n)
	}
	if handle >= 0 && len(ctxs) > 1 {
		return nil, -1, fmt.Errorf("%d RDMA contexts, each with its own handles: name the QP with --qpn, or the context with --fd", len(ctxs))
	}
	return ctxs, handle, nil
}

func list(ctxs []*rdma.Context, asJSON bool) error {
	var out []contextQPs
	for _, c := range ctxs {
		refs, err := c.QPs()
		if err != nil {
			return err
		}
		cq := contextQPs{Path: c.Path, FD: c.FD}
		for _, r := range refs {
			info, err := c.QueryQP(r.Handle)
			if err != nil {
				return err
			}
			cq.QPs = append(cq.QPs, info)
		}
		out = append(out, cq)
	}
	if asJSON {
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTEXT\tHANDLE\tQPN\tDEST\tSTATE\tREQ_PSN\tCOMP_PSN\tRESP_PSN\tPAUSED_MS")
	for _, cq := range out {
		for _, q := range cq.QPs {
			state := q.Mig.String()
			if q.Resuming {
				state += ",resuming"
			}
			fmt.Fprintf(tw, "%s(fd %d)\t%d\t%#x\t%#x\t%s\t%#x\t%#x\t%#x\t%d\n", cq.Path, cq.FD, q.Handle, q.QPN,
				q.DestQPN, state, q.ReqPSN, q.CompPSN, q.RespPSN, q.PausedMS)
		}
	}
	return tw.Flush()
}
