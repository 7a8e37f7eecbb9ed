// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/migros/migros/integration/lab/control"
	"github.com/migros/migros/integration/perftest"
)

// TestImage is the image every guest imports at boot (Assets.Image).
const TestImage = "localhost/migros/rdma-test:latest"

// RDMAPort is the TCP port perftest and the ibv_*_pingpong programs use to
// exchange connection details.
const RDMAPort = 18515

// Container describes a container run with ctr.
type Container struct {
	ID    string
	Image string // default TestImage
	// RDMA passes every /dev/infiniband device into the container and runs
	// it in the guest's network namespace, where its rxe device lives.
	RDMA bool
	// NetHost runs it in the guest's network namespace (RDMA does too).
	NetHost bool
	// Devices are more ctr --device arguments: device paths or CDI names.
	Devices []string
	// NetNS is a named network namespace (ip netns) it joins.
	NetNS string
	// Annotations are added to its spec.
	Annotations map[string]string
	// Runtime is the containerd runtime (default io.containerd.runc.v2).
	Runtime string
	// Detach returns once the task has started (ctr run -d).
	Detach bool
}

// RunArgv returns the ctr command that runs argv in c on g.
func (g *Guest) RunArgv(ctx context.Context, c Container, argv ...string) ([]string, error) {
	image := c.Image
	if image == "" {
		image = TestImage
	}
	cmd := []string{"ctr", "run", "--rm"}
	if c.Detach {
		cmd = []string{"ctr", "run", "-d"}
	}
	if c.Runtime != "" {
		cmd = append(cmd, "--runtime", c.Runtime)
	}
	if c.RDMA {
		devs, err := g.RDMADevices(ctx)
		if err != nil {
			return nil, err
		}
		for _, d := range devs {
			cmd = append(cmd, "--device", d)
		}
	}
	for _, d := range c.Devices {
		cmd = append(cmd, "--device", d)
	}
	if c.NetNS != "" {
		cmd = append(cmd, "--with-ns", "network:/var/run/netns/"+c.NetNS)
	}
	if c.RDMA || c.NetHost {
		cmd = append(cmd, "--net-host")
	}
	keys := make([]string, 0, len(c.Annotations))
	for k := range c.Annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd = append(cmd, "--annotation", k+"="+c.Annotations[k])
	}
	return append(append(cmd, image, c.ID), argv...), nil
}

// RDMADevices lists the guest's /dev/infiniband device nodes.
func (g *Guest) RDMADevices(ctx context.Context) ([]string, error) {
	out, err := g.Output(ctx, "sh", "-c", "ls /dev/infiniband/*")
	if err != nil {
		return nil, err
	}
	devs := strings.Fields(out)
	if len(devs) == 0 {
		return nil, fmt.Errorf("guest %s: no /dev/infiniband devices", g.Name)
	}
	return devs, nil
}

// RemoveContainer kills and deletes a container and its task, ignoring
// what is already gone.
func (g *Guest) RemoveContainer(ctx context.Context, id string) {
	_ = g.Run(ctx, "ctr", "task", "kill", "-s", "SIGKILL", id)
	for range 50 {
		if g.Run(ctx, "ctr", "task", "delete", id) != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = g.Run(ctx, "ctr", "container", "delete", id)
}

// WaitListening waits until a process in the guest's network namespace
// listens on TCP port.
func (g *Guest) WaitListening(ctx context.Context, port int, server *control.Process) error {
	filter := fmt.Sprintf("sport = :%d", port)
	for {
		out, err := g.Output(ctx, "ss", "-Hltn", filter)
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest %s: nothing listens on port %d: %w", g.Name, port, ctx.Err())
		case <-server.Done():
			return fmt.Errorf("guest %s: server ended before listening: %w", g.Name, server.Wait())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PairResult holds the output of both sides of a client/server program.
type PairResult struct {
	Server, Client string
}

// RunPair runs an RDMA program pair: serverArgv on server, then clientArgv
// on client once the server listens on RDMAPort. Both must succeed. A run
// that perftest voids because it could not calibrate its cycle counter
// under emulation is run again, up to three times in all.
func RunPair(ctx context.Context, server *Guest, serverArgv []string, client *Guest, clientArgv []string) (PairResult, error) {
	for try := 1; ; try++ {
		res, err := runPair(ctx, server, serverArgv, client, clientArgv)
		if err == nil || try == 3 || !perftest.CalibrationFailed(res.Client+res.Server) {
			return res, err
		}
		server.cfg.logf("%s: perftest could not calibrate its clock; running it again", clientArgv[0])
	}
}

// Pair is a client/server program pair started by StartPair.
type Pair struct {
	Server, Client       *control.Process
	ServerOut, ClientOut *bytes.Buffer // read them once the process ended
}

// StartPair starts serverArgv on server and, once it listens on RDMAPort,
// clientArgv on client; both run until they end or ctx ends.
func StartPair(ctx context.Context, server *Guest, serverArgv []string, client *Guest, clientArgv []string) (*Pair, error) {
	p := &Pair{ServerOut: &bytes.Buffer{}, ClientOut: &bytes.Buffer{}}
	sp, err := server.Start(ctx, &control.Cmd{Argv: serverArgv, Stdout: p.ServerOut, Stderr: p.ServerOut})
	if err != nil {
		return nil, err
	}
	if err := server.WaitListening(ctx, RDMAPort, sp); err != nil {
		sp.Kill()
		return nil, fmt.Errorf("%w\nserver output:\n%s", err, p.ServerOut)
	}
	cp, err := client.Start(ctx, &control.Cmd{Argv: clientArgv, Stdout: p.ClientOut, Stderr: p.ClientOut})
	if err != nil {
		sp.Kill()
		return nil, err
	}
	p.Server, p.Client = sp, cp
	return p, nil
}

// Kill ends both programs.
func (p *Pair) Kill() {
	p.Client.Kill()
	p.Server.Kill()
}

func runPair(ctx context.Context, server *Guest, serverArgv []string, client *Guest, clientArgv []string) (PairResult, error) {
	var res PairResult
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p, err := StartPair(sctx, server, serverArgv, client, clientArgv)
	if err != nil {
		return res, err
	}
	cerr := p.Client.Wait()
	if cerr == nil {
		select {
		case <-p.Server.Done():
		case <-time.After(60 * time.Second):
		}
	}
	cancel()
	serr := p.Server.Wait()
	res.Client, res.Server = p.ClientOut.String(), p.ServerOut.String()
	switch {
	case cerr != nil:
		return res, fmt.Errorf("client: %w\nclient output:\n%s\nserver output:\n%s", cerr, res.Client, res.Server)
	case serr != nil:
		return res, fmt.Errorf("server: %w\nserver output:\n%s", serr, res.Server)
	}
	return res, nil
}

// ErrNoResult is returned when a tool's output lacks the expected result.
var ErrNoResult = errors.New("no result in output")

// MacvlanNetns makes network namespace name (ip netns) on g with one
// link, eth0, a macvlan of g's eth0 with its own addr (ADDRESS/PREFIX)
// and mac: the network of a container that moves between guests with
// its address (migros migrate makes it again on the destination).
func (g *Guest) MacvlanNetns(ctx context.Context, name, addr, mac string) error {
	in := "ip -n " + name + " "
	setup := "ip netns add " + name + " && " +
		"ip link add mv-" + name + " address " + mac + " link eth0 type macvlan mode bridge && " +
		"ip link set mv-" + name + " netns " + name + " && " + in + "link set mv-" + name + " name eth0 && " +
		in + "addr add " + addr + " dev eth0 && " + in + "link set eth0 up && " + in + "link set lo up"
	if out, err := g.Output(ctx, "sh", "-c", setup); err != nil {
		return fmt.Errorf("network namespace %s on %s: %w\n%s", name, g.Name, err, out)
	}
	return nil
}
