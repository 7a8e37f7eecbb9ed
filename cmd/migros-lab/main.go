// SPDX-License-Identifier: Apache-2.0

// Command migros-lab runs MigrOS' QEMU lab: it boots the guests, tears them
// down, runs commands and shells in them, builds the RDMA test image, and,
// inside a guest, is the control agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/migros/migros/integration/lab"
	"github.com/migros/migros/integration/lab/control"
	"github.com/migros/migros/integration/testimage"
	"github.com/migros/migros/runtime/container"
)

const usage = `usage: migros-lab COMMAND [flags]

commands:
  up      [--name N] [--guests G,..] boot the lab and leave it running
  down    [--name N | --all]         stop guests, remove taps, bridge, namespace
  status  [--name N]                 show the guests of a running lab
  exec    [--name N] GUEST CMD...    run a command in a guest
  shell   [--name N] GUEST           interactive shell in a guest (Ctrl-] quits)
  demo    [--assets F]               boot a lab, run RDMA containers, tear down
  image   -o FILE [-add PROG,..]     build the RDMA test image (OCI archive)
  checkpoint [--exit] ID REF         (in a guest) checkpoint container ID whole (spec, rw
                                     layer, task) as REF; --exit stops it (to move it)
  restore-task ID CHECKPOINT         (in a guest) restore container ID's task from a
                                     task checkpoint (ctr task checkpoint), which ctr cannot
  agent   [--port NAME]              (in a guest) serve the control channel
  forge   --to IP --qpn N --src-qpn N [--psn P] [--token T] [--type resume|resume-ack] [--bad-icrc]
                                     (in a guest) send one crafted MigrOS packet
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmds := map[string]func(context.Context, []string) error{
		"up": up, "down": down, "status": status, "exec": execCmd, "shell": shell,
		"demo": demo, "image": image, "agent": agent, "forge": forge, "restore-task": restoreTask,
		"checkpoint": checkpointContainer,
	}
	fn, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err := fn(ctx, os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "migros-lab %s: %v\n", os.Args[1], err)
		var ee *control.ExitError
		if errors.As(err, &ee) && ee.ExitCode > 0 {
			os.Exit(ee.ExitCode)
		}
		os.Exit(1)
	}
}

// common flags of the commands that act on a lab.
type labFlags struct {
	name, assets, stateRoot, guests string
}

func (f *labFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.name, "name", "lab", "lab name")
	fs.StringVar(&f.assets, "assets", defaultAssets(), "assets.json made by make lab-assets")
	fs.StringVar(&f.stateRoot, "state", lab.DefaultStateRoot, "state directory root")
	fs.StringVar(&f.guests, "guests", "src,dst,peer", "guests to boot (up, demo)")
}

// defaultAssets finds _output/lab/assets.json from the working directory.
func defaultAssets() string {
	if p := os.Getenv("MIGROS_ASSETS"); p != "" {
		return p
	}
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "_output", "lab", "assets.json")
		}
	}
	return filepath.Join(dir, "_output", "lab", "assets.json")
}

func (f *labFlags) config() (lab.Config, error) {
	a, err := lab.LoadAssets(f.assets)
	if err != nil {
		return lab.Config{}, err
	}
	guests, err := lab.GuestsNamed(strings.Split(f.guests, ",")...)
	if err != nil {
		return lab.Config{}, err
	}
	return lab.Config{Name: f.name, Assets: a, Guests: guests, StateRoot: f.stateRoot, Log: os.Stderr}, nil
}

func up(ctx context.Context, args []string) error {
	var f labFlags
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	f.register(fs)
	fs.Parse(args)
	cfg, err := f.config()
	if err != nil {
		return err
	}
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	defer l.Close()
	printStatus(ctx, l)
	fmt.Printf("\nThe lab stays up. Enter a guest with: migros-lab shell [--name %s] GUEST\n", f.name)
	fmt.Printf("Remove it with: make lab-down (or migros-lab down --name %s)\n", f.name)
	return nil
}

func down(ctx context.Context, args []string) error {
	var f labFlags
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	f.register(fs)
	all := fs.Bool("all", false, "remove every lab on this machine")
	fs.Parse(args)
	if *all {
		return lab.TeardownAll(ctx, f.stateRoot)
	}
	return lab.Teardown(ctx, f.name, f.stateRoot)
}

func attach(f *labFlags) (*lab.Lab, error) { return lab.Attach(f.name, f.stateRoot) }

func status(ctx context.Context, args []string) error {
	var f labFlags
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	f.register(fs)
	fs.Parse(args)
	l, err := attach(&f)
	if err != nil {
		return err
	}
	defer l.Close()
	printStatus(ctx, l)
	return nil
}

func printStatus(ctx context.Context, l *lab.Lab) {
	for _, g := range l.Guests() {
		v, err := g.Output(ctx, "cat", "/sys/module/rdma_rxe/parameters/migros_version")
		if err != nil {
			v = "stock rdma_rxe (no migros_version)"
		}
		fmt.Printf("%-5s %-15s rdma_rxe %-24s console %s\n", g.Name, g.Addr(), strings.TrimSpace(v), g.ConsolePath())
	}
}

func execCmd(ctx context.Context, args []string) error {
	var f labFlags
	fs := flag.NewFlagSet("exec", flag.ExitOnError)
	f.register(fs)
	fs.Parse(args)
	if fs.NArg() < 2 {
		return errors.New("usage: exec [--name N] GUEST CMD...")
	}
	l, err := attach(&f)
	if err != nil {
		return err
	}
	defer l.Close()
	g := l.Guest(fs.Arg(0))
	if g == nil {
		return fmt.Errorf("no guest %q", fs.Arg(0))
	}
	return g.Exec(ctx, &control.Cmd{Argv: fs.Args()[1:], Stdout: os.Stdout, Stderr: os.Stderr})
}

// shell connects the terminal to the guest's console shell (hvc0).
func shell(ctx context.Context, args []string) error {
	var f labFlags
	fs := flag.NewFlagSet("shell", flag.ExitOnError)
	f.register(fs)
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("usage: shell [--name N] GUEST")
	}
	sock := filepath.Join(f.stateRoot, f.name, fs.Arg(0), "shell.sock")
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return fmt.Errorf("guest %s of lab %s: %w", fs.Arg(0), f.name, err)
	}
	defer conn.Close()
	if term.IsTerminal(int(os.Stdin.Fd())) {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err != nil {
			return err
		}
		defer term.Restore(int(os.Stdin.Fd()), old)
	}
	fmt.Fprintf(os.Stderr, "[connected to %s; Ctrl-] quits]\r\n", fs.Arg(0))
	conn.Write([]byte("\n"))
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(os.Stdout, conn)
		done <- err
	}()
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := os.Stdin.Read(buf)
			if err != nil {
				done <- err
				return
			}
			if i := strings.IndexByte(string(buf[:n]), 0x1d); i >= 0 {
				conn.Write(buf[:i])
				done <- nil
				return
			}
			if _, err := conn.Write(buf[:n]); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

func image(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	out := fs.String("o", "", "output file")
	add := fs.String("add", "", "more programs, comma-separated, copied at their own path with their libraries")
	fs.Parse(args)
	if *out == "" {
		return errors.New("usage: image -o FILE [-add PROGRAM,...]")
	}
	spec := testimage.DefaultSpec()
	if *add != "" {
		spec.Programs = append(spec.Programs, strings.Split(*add, ",")...)
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	digest, err := testimage.Build(ctx, spec, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	fmt.Printf("%s %s\n", testimage.Ref, digest)
	return os.Rename(tmp, *out)
}

func agent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	name := fs.String("port", "org.migros.control", "name of the virtio-serial port")
	fs.Parse(args)
	// Without udev there is no /dev/virtio-ports/NAME link: find the port's
	// device by its name in sysfs, once virtio_console has probed it.
	var dev string
	for i := 0; dev == ""; i++ {
		dev = findPort(*name)
		if dev == "" && i > 600 {
			return fmt.Errorf("no virtio-serial port named %s", *name)
		}
		if dev == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	srv := &control.Server{Logf: control.Logger("migros-lab agent: ")}
	return srv.ServePort(ctx, dev)
}

// findPort returns /dev/vportNpM of the virtio-serial port called name.
func findPort(name string) string {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(n))
		}
	}
	return ""
}

// checkpointContainer makes a container checkpoint that stops the
// container, which ctr container checkpoint cannot: the way to move a
// container to another host with ctr images export/import.
func checkpointContainer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("checkpoint", flag.ExitOnError)
	address := fs.String("address", container.DefaultAddress, "containerd's socket")
	ns := fs.String("namespace", "default", "containerd namespace")
	exit := fs.Bool("exit", false, "stop the container once checkpointed")
	fs.Parse(args)
	if fs.NArg() != 2 {
		return errors.New("usage: checkpoint [--address SOCK] [--namespace NS] [--exit] ID REF")
	}
	return container.Checkpoint(ctx, *address, *ns, fs.Arg(0), fs.Arg(1), *exit)
}

// restoreTask restores a container's task from a task checkpoint through
// containerd's API (NewTask with the checkpoint, then Start): the path
// containerd clients other than ctr take.
func restoreTask(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("restore-task", flag.ExitOnError)
	address := fs.String("address", container.DefaultAddress, "containerd's socket")
	ns := fs.String("namespace", "default", "containerd namespace")
	work := fs.String("work-path", "", "directory for CRIU's work files and log")
	fs.Parse(args)
	if fs.NArg() != 2 {
		return errors.New("usage: restore-task [--address SOCK] [--namespace NS] [--work-path DIR] ID CHECKPOINT")
	}
	pid, err := container.RestoreTask(ctx, *address, *ns, fs.Arg(0), fs.Arg(1), *work)
	if err != nil {
		return err
	}
	fmt.Printf("restored container %s, pid %d\n", fs.Arg(0), pid)
	return nil
}
