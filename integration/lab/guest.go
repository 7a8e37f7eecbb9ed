// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/migros/migros/integration/lab/control"
)

// Guest is one lab host.
type Guest struct {
	GuestSpec
	index int // position in the lab's configuration
	cfg   *Config
	dir   string
	mu    sync.Mutex
	ctl   *control.Client
}

func newGuest(cfg *Config, index int, spec GuestSpec) *Guest {
	return &Guest{GuestSpec: spec, index: index, cfg: cfg, dir: filepath.Join(cfg.StateDir(), spec.Name)}
}

// Share is the host directory the guest sees, writable, at /lab.
func (g *Guest) Share() string { return filepath.Join(g.dir, "share") }

// ConsolePath is the host file with the guest's serial console.
func (g *Guest) ConsolePath() string { return filepath.Join(g.dir, "console.log") }

// ShellSocket is the host socket of the guest's interactive shell.
func (g *Guest) ShellSocket() string { return filepath.Join(g.dir, "shell.sock") }

func (g *Guest) controlSocket() string { return filepath.Join(g.dir, "control.sock") }

// prepare makes the guest's state directory and share.
func (g *Guest) prepare() error {
	if err := os.RemoveAll(g.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(g.Share(), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(g.Share(), "containerd.toml"), []byte(ContainerdConfig()), 0o644)
}

// ContainerdConfig is the guests' containerd configuration. CRI is off: the
// lab drives containerd through its own API and ctr.
func ContainerdConfig() string {
	return `version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.sandbox.controller.v1.shim",
]

[grpc]
  address = "/run/containerd/containerd.sock"
`
}

func (g *Guest) qemuArgs() []string {
	a := g.cfg.Assets
	rxe := a.RXE
	if g.RXE == RXEStock {
		rxe = string(RXEStock)
	}
	kargs := []string{
		"console=ttyS0", "quiet", "panic=-1",
		"migros.init=" + a.GuestInit,
		"migros.name=" + g.Name,
		"migros.ip=" + g.IP,
		"migros.bin=" + a.Bin,
		"migros.modules=" + a.Modules,
		"migros.rxe=" + rxe,
	}
	return []string{
		"qemu-system-x86_64",
		"-name", qemuName(g.cfg.Name, g.Name),
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
		"-m", fmt.Sprint(g.MemoryMB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", a.Initrd, "-append", strings.Join(kargs, " "),
		"-chardev", "file,id=console,path=" + g.ConsolePath(),
		"-serial", "chardev:console",
		"-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on",
		"-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
		"-fsdev", "local,id=lab,path=" + g.Share() + ",security_model=none",
		"-device", "virtio-9p-pci,fsdev=lab,mount_tag=lab",
		"-netdev", netdevArg(g.cfg, g.index, g.Name),
		"-device", "virtio-net-pci,netdev=net0,mac=" + g.MAC,
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=control,path=" + g.controlSocket() + ",server=on,wait=off",
		"-device", "virtserialport,chardev=control,name=org.migros.control",
		"-chardev", "socket,id=shell,path=" + g.ShellSocket() + ",server=on,wait=off",
		"-device", "virtconsole,chardev=shell",
		"-daemonize", "-pidfile", filepath.Join(g.dir, "qemu.pid"),
	}
}

// launch starts QEMU inside the lab's namespace; it daemonizes once its
// devices are set up.
func (g *Guest) launch(ctx context.Context) error {
	argv := append([]string{"ip", "netns", "exec", g.cfg.Netns()}, g.qemuArgs()...)
	if err := run(ctx, argv...); err != nil {
		return fmt.Errorf("guest %s: start QEMU: %w", g.Name, err)
	}
	return nil
}

// connect dials the guest's agent unless already connected. A guest's
// control socket takes one client at a time.
func (g *Guest) connect(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctl != nil {
		return nil
	}
	c, err := control.Dial(ctx, g.controlSocket())
	if err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	g.ctl = c
	return nil
}

func (g *Guest) closeControl() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctl != nil {
		g.ctl.Close()
		g.ctl = nil
	}
}

// alive reports whether the guest's QEMU is still running.
func (g *Guest) alive() bool {
	return len(labProcessesOf(g.cfg.Name, g.Name)) > 0
}

// watchDeath returns a context that ends, with cause errGuestDied, when
// the guest's QEMU exits (the guest powered off or crashed).
func (g *Guest) watchDeath(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
				if !g.alive() {
					cancel(fmt.Errorf("guest %s: QEMU exited (the guest powered off or crashed)", g.Name))
					return
				}
			}
		}
	}()
	return ctx, func() { cancel(nil) }
}

// waitReady waits for the control agent and for the guest init to report.
func (g *Guest) waitReady(ctx context.Context) error {
	ctx, cancel := g.watchDeath(ctx)
	defer cancel()
	if err := g.connect(ctx); err != nil {
		if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
			return cause
		}
		return err
	}
	for {
		var st bytes.Buffer
		err := g.ctl.ReadFile(ctx, "/run/migros-lab/status", &st)
		s := strings.TrimSpace(st.String())
		switch {
		case err == nil && s == "ready":
			return nil
		case err == nil && strings.HasPrefix(s, "failed"):
			return fmt.Errorf("guest %s: setup %s", g.Name, s)
		}
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != ctx.Err() {
				return cause
			}
			return fmt.Errorf("guest %s: not ready (%s): %w", g.Name, s, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Console returns the guest's serial console so far.
func (g *Guest) Console() string {
	b, err := os.ReadFile(g.ConsolePath())
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	return string(b)
}

// Logs collects what explains a failure: the console, and when the guest
// still answers, its kernel log and containerd's log.
func (g *Guest) Logs(ctx context.Context) string {
	var b strings.Builder
	fmt.Fprintf(&b, "===== %s: console (%s) =====\n%s\n", g.Name, g.ConsolePath(), tail(g.Console(), 200))
	if !g.alive() {
		return b.String()
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := g.client(ctx)
	if err != nil {
		return b.String()
	}
	if out, err := c.Output(ctx, "dmesg"); err == nil {
		fmt.Fprintf(&b, "===== %s: dmesg =====\n%s\n", g.Name, tail(out, 150))
	}
	var cl bytes.Buffer
	if err := c.ReadFile(ctx, "/lab/containerd.log", &cl); err == nil {
		fmt.Fprintf(&b, "===== %s: containerd.log =====\n%s\n", g.Name, tail(cl.String(), 60))
	}
	return b.String()
}

// failure wraps err with the guest's logs.
func (g *Guest) failure(ctx context.Context, err error) error {
	return fmt.Errorf("%w\n%s", err, g.Logs(context.WithoutCancel(ctx)))
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = append([]string{fmt.Sprintf("[... %d lines before]", len(l)-lines)}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "\n")
}

// attachTimeout bounds connecting to a running guest's agent.
const attachTimeout = 15 * time.Second

func (g *Guest) client(ctx context.Context) (*control.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	if err := g.connect(cctx); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ctl, nil
}

// Run runs argv in the guest; the error carries its exit status and the end
// of its error output.
func (g *Guest) Run(ctx context.Context, argv ...string) error {
	_, err := g.Output(ctx, argv...)
	return err
}

// Output runs argv in the guest and returns its standard output.
func (g *Guest) Output(ctx context.Context, argv ...string) (string, error) {
	c, err := g.client(ctx)
	if err != nil {
		return "", err
	}
	out, err := c.Output(ctx, argv...)
	if err != nil {
		return out, fmt.Errorf("guest %s: %w", g.Name, err)
	}
	return out, nil
}

// Start starts cmd in the guest and returns at once.
func (g *Guest) Start(ctx context.Context, cmd *control.Cmd) (*control.Process, error) {
	c, err := g.client(ctx)
	if err != nil {
		return nil, err
	}
	return c.Start(ctx, cmd)
}

// Exec runs cmd in the guest and waits for it.
func (g *Guest) Exec(ctx context.Context, cmd *control.Cmd) error {
	c, err := g.client(ctx)
	if err != nil {
		return err
	}
	if err := c.Run(ctx, cmd); err != nil {
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	return nil
}

// CopyIn copies the host file src to dst in the guest.
func (g *Guest) CopyIn(ctx context.Context, src, dst string) error {
	c, err := g.client(ctx)
	if err != nil {
		return err
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return c.WriteFile(ctx, dst, f, uint32(st.Mode().Perm()))
}

// CopyOut copies the guest file src to the host file dst.
func (g *Guest) CopyOut(ctx context.Context, src, dst string) error {
	c, err := g.client(ctx)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := c.ReadFile(ctx, src, f); err != nil {
		f.Close()
		os.Remove(dst)
		return fmt.Errorf("guest %s: %w", g.Name, err)
	}
	return f.Close()
}

// ImportImage imports an OCI archive (a host path, visible in the guest
// through the shared root) into the guest's containerd.
func (g *Guest) ImportImage(ctx context.Context, archive string) error {
	return g.Run(ctx, "ctr", "images", "import", archive)
}

// LoadRXE replaces the guest's rdma_rxe with ours or Debian's stock module
// and recreates rxe0 on eth0. Nothing may be using the device.
func (g *Guest) LoadRXE(ctx context.Context, which RXE) error {
	load := "insmod " + g.cfg.Assets.RXE
	if which == RXEStock {
		load = "modprobe rdma_rxe"
	}
	script := "rdma link delete rxe0 2>/dev/null; " +
		"if [ -d /sys/module/rdma_rxe ]; then rmmod rdma_rxe || exit 1; fi; " +
		load + " && rdma link add rxe0 type rxe netdev eth0"
	if err := g.Run(ctx, "sh", "-c", script); err != nil {
		return err
	}
	_, err := g.Output(ctx, "cat", "/sys/module/rdma_rxe/parameters/migros_version")
	if ours := err == nil; ours != (which == RXEMigrOS) {
		return fmt.Errorf("guest %s: loading %q left the wrong rdma_rxe (ours: %v)", g.Name, which, ours)
	}
	return nil
}
