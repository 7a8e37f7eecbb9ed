// SPDX-License-Identifier: Apache-2.0

// Command migros-criu is what MigrOS' CRIU plugin runs (it finds it in
// MIGROS_BIN) for each uverbs file of a dump and each restored process
// with uverbs files: it dumps and rebuilds their RDMA state. It is kept
// apart from the migros CLI, and small, because CRIU waits for it while
// the container is frozen.
//
//	migros-criu criu-dump --fd 3 --images-fd 4 --id ID
//	migros-criu criu-restore --fd 3 --images-fd 4 --pid PID
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/migros/migros/rdma/criu"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: migros-criu criu-dump|criu-restore ... (run by MigrOS' CRIU plugin)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "criu-dump":
		err = criuDump(os.Args[2:])
	case "criu-restore":
		err = criuRestore(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "migros-criu: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "migros %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
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
	dir, err := imagesDir(*dirFD)
	if err != nil {
		return err
	}
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

// criuRestore is what the CRIU plugin runs for each restored process that
// has uverbs files: fd 3 is the plugin's system call executor for the
// process, fd 4 the images directory.
func criuRestore(args []string) error {
	fs := flag.NewFlagSet("criu-restore", flag.ExitOnError)
	fd := fs.Int("fd", 3, "the executor socket")
	dirFD := fs.Int("images-fd", 4, "the images directory")
	pid := fs.Int("pid", 0, "the restored process")
	fs.Parse(args)
	if *pid <= 0 {
		return errors.New("--pid is required")
	}
	dir, err := imagesDir(*dirFD)
	if err != nil {
		return err
	}
	resume, err := criu.Restore(*pid, dir, criu.NewExecutor(os.NewFile(uintptr(*fd), "executor")))
	if err != nil {
		return err
	}
	// Standard error is CRIU's log, which a migration's report reads.
	fmt.Fprintf(os.Stderr, "%s %d (process %d)\n", criu.ResumedLog, resume.Microseconds(), *pid)
	return nil
}

// imagesDir is the images directory CRIU's plugin passed as fd.
func imagesDir(fd int) (*os.File, error) {
	p := fmt.Sprintf("/proc/self/fd/%d", fd)
	path, err := os.Readlink(p)
	if err != nil {
		return nil, fmt.Errorf("images directory fd %d: %w", fd, err)
	}
	if st, err := os.Stat(p); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("images fd %d is %s, not a directory", fd, path)
	}
	return os.NewFile(uintptr(fd), path), nil
}
