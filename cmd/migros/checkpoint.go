// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/migros/migros/runtime/checkpoint"
	"github.com/migros/migros/runtime/install"
)

// pluginDir is where the build and make install put migros_criu.so.
func pluginDir() string { return install.Beside().PluginDir }

func checkpointCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("checkpoint", flag.ExitOnError)
	pid := fs.Int("pid", 0, "process (tree) to checkpoint")
	images := fs.String("images", "", "directory for the images")
	leave := fs.Bool("leave-running", false, "keep the process running")
	plugins := fs.String("criu-plugins", pluginDir(), "directory with migros_criu.so")
	fs.Parse(args)
	if *pid <= 0 || *images == "" {
		return errors.New("--pid and --images are required")
	}
	return checkpoint.Run(ctx, checkpoint.Options{PID: *pid, ImagesDir: *images, LeaveRunning: *leave,
		PluginDir: *plugins, MigrosBin: install.Beside().Helper})
}

func restoreCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("restore", flag.ExitOnError)
	images := fs.String("images", "", "directory with the images")
	plugins := fs.String("criu-plugins", pluginDir(), "directory with migros_criu.so")
	fs.Parse(args)
	if *images == "" {
		return errors.New("--images is required")
	}
	pid, err := checkpoint.Restore(ctx, checkpoint.RestoreOptions{ImagesDir: *images, PluginDir: *plugins,
		MigrosBin: install.Beside().Helper})
	if err != nil {
		return err
	}
	fmt.Printf("restored process %d\n", pid)
	return nil
}

func inspect(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: migros inspect DIR")
	}
	imgs, err := checkpoint.Images(args[0])
	if err != nil {
		return err
	}
	if len(imgs) == 0 {
		return fmt.Errorf("%s holds no RDMA image", args[0])
	}
	ids := make([]int, 0, len(imgs))
	for id := range imgs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, id := range ids {
		c := imgs[id]
		o := c.Objects
		fmt.Fprintf(tw, "file %d: process %d fd %d %s (rdma_rxe %s), event fds %v\n", id, c.PID, c.FD, c.Device, c.MigVersion, c.EventFDs)
		if len(c.GIDs) > 0 {
			fmt.Fprintf(tw, "  device GIDs %s\n", strings.Join(c.GIDs, " "))
		}
		fmt.Fprintln(tw, "  OBJECT\tHANDLE\tID\tDETAILS")
		for _, h := range o.PDs {
			fmt.Fprintf(tw, "  PD\t%d\t\t\n", h)
		}
		for _, m := range o.MRs {
			fmt.Fprintf(tw, "  MR\t%d\tlkey %#x rkey %#x\t%#x+%d access %#x pd %d\n", m.Handle, m.LKey, m.RKey, m.Start, m.Length, m.Access, m.PDHandle)
		}
		for _, q := range o.CQs {
			fmt.Fprintf(tw, "  CQ\t%d\t\tcqe %d ring %d B; events read %d, queued %d\n",
				q.Handle, q.CQE, q.Queue.BufSize, q.Events.CompReported, q.Events.CompPending)
		}
		for _, s := range o.SRQs {
			fmt.Fprintf(tw, "  SRQ\t%d\tsrq %#x\tmax_wr %d pd %d\n", s.Handle, s.SRQNum, s.MaxWR, s.PDHandle)
		}
		for _, q := range o.QPs {
			held := ""
			if q.Progress.HeldCount > 0 {
				held = fmt.Sprintf("; requests held: %d", q.Progress.HeldCount)
			}
			fmt.Fprintf(tw, "  QP\t%d\tqpn %#x\ttype %d state %d -> qpn %#x; sq_psn %#x req %#x comp %#x resp %#x msn %d; %s%s\n",
				q.Handle, q.QPN, q.QPType, q.QPState, q.DestQPN, q.SQPSN, q.ReqPSN, q.CompPSN, q.RespPSN, q.RespMSN, q.Mig, held)
		}
		for _, w := range o.MWs {
			bound := "unbound"
			if w.MRLKey != 0 {
				bound = fmt.Sprintf("bound to MR lkey %#x at %#x+%d access %#x", w.MRLKey, w.Addr, w.Length, w.Access)
				if w.QPN != 0 {
					bound += fmt.Sprintf(" through QP %#x", w.QPN)
				}
			}
			fmt.Fprintf(tw, "  MW\t%d\trkey %#x\ttype %d pd %d, %s\n", w.Handle, w.RKey, w.Type, w.PDHandle, bound)
		}
		for _, a := range o.AHs {
			fmt.Fprintf(tw, "  AH\t%d\tah %d\tpd %d\n", a.Handle, a.AHNum, a.PDHandle)
		}
		for _, r := range c.Rings {
			fmt.Fprintf(tw, "  ring\t%d\t%s\t%d B at %#x\n", r.Handle, r.Kind, len(r.Data), r.VA)
		}
	}
	return tw.Flush()
}
