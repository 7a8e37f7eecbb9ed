// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"

	"github.com/migros/migros/rdma/criu"
	"github.com/migros/migros/runtime/checkpoint"
)

// pluginDir is where make puts migros_criu.so: ../lib/criu from this
// binary.
func pluginDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "/usr/local/lib/migros/criu"
	}
	return filepath.Join(filepath.Dir(exe), "..", "lib", "criu")
}

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
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return checkpoint.Run(ctx, checkpoint.Options{PID: *pid, ImagesDir: *images, LeaveRunning: *leave,
		PluginDir: *plugins, MigrosBin: exe})
}

// criuDump is what the CRIU plugin runs for each uverbs file: the file is
// fd 3, the images directory fd 4.
func criuDump(args []string) error {
	fs := flag.NewFlagSet("criu-dump", flag.ExitOnError)
	fd := fs.Int("fd", 3, "the uverbs file")
	dirFD := fs.Int("images-fd", 4, "the images directory")
	id := fs.Int("id", -1, "CRIU's id of the file")
	fs.Parse(args)
	if *id < 0 {
		return errors.New("--id is required")
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", *fd))
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(*fd), path)
	dirPath, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", *dirFD))
	if err != nil {
		return fmt.Errorf("images directory fd %d: %w", *dirFD, err)
	}
	if st, err := os.Stat(fmt.Sprintf("/proc/self/fd/%d", *dirFD)); err != nil || !st.IsDir() {
		return fmt.Errorf("images fd %d is %s, not a directory", *dirFD, dirPath)
	}
	dir := os.NewFile(uintptr(*dirFD), dirPath)
	pid, tfd, err := criu.Owner(f)
	if err != nil {
		return err
	}
	img, err := criu.Dump(f, pid, tfd)
	if err != nil {
		return err
	}
	return criu.WriteImage(dir, *id, img)
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
		fmt.Fprintln(tw, "  OBJECT\tHANDLE\tID\tDETAILS")
		for _, h := range o.PDs {
			fmt.Fprintf(tw, "  PD\t%d\t\t\n", h)
		}
		for _, m := range o.MRs {
			fmt.Fprintf(tw, "  MR\t%d\tlkey %#x rkey %#x\t%#x+%d access %#x pd %d\n", m.Handle, m.LKey, m.RKey, m.Start, m.Length, m.Access, m.PDHandle)
		}
		for _, q := range o.CQs {
			fmt.Fprintf(tw, "  CQ\t%d\t\tcqe %d ring %d B\n", q.Handle, q.CQE, q.Queue.BufSize)
		}
		for _, s := range o.SRQs {
			fmt.Fprintf(tw, "  SRQ\t%d\tsrq %#x\tmax_wr %d pd %d\n", s.Handle, s.SRQNum, s.MaxWR, s.PDHandle)
		}
		for _, q := range o.QPs {
			fmt.Fprintf(tw, "  QP\t%d\tqpn %#x\ttype %d state %d -> qpn %#x; sq_psn %#x req %#x comp %#x resp %#x msn %d; %s\n",
				q.Handle, q.QPN, q.QPType, q.QPState, q.DestQPN, q.SQPSN, q.ReqPSN, q.CompPSN, q.RespPSN, q.RespMSN, q.Mig)
		}
		for _, w := range o.MWs {
			fmt.Fprintf(tw, "  MW\t%d\trkey %#x\ttype %d pd %d\n", w.Handle, w.RKey, w.Type, w.PDHandle)
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
