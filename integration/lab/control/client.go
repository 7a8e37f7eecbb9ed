// SPDX-License-Identifier: Apache-2.0

package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Client talks to one guest's agent.
type Client struct {
	conn net.Conn
	sess *yamux.Session
}

// Dial connects to the QEMU chardev socket at path and waits until the agent
// answers a ping, or ctx ends.
func Dial(ctx context.Context, path string) (*Client, error) {
	var last error
	for {
		c, err := dialOnce(ctx, path)
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("control: guest agent at %s not reachable: %w (last error: %v)", path, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func dialOnce(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	// A guest under emulation can be slow to answer.
	cfg.ConnectionWriteTimeout = 60 * time.Second
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &Client{conn: conn, sess: sess}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(pctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close ends the session; processes still running in the guest are killed.
func (c *Client) Close() error {
	err := c.sess.Close()
	c.conn.Close()
	return err
}

// call opens a stream for req. The stream is closed when ctx ends, which
// unblocks any read or write on it.
func (c *Client) call(ctx context.Context, req *Request) (net.Conn, func(), error) {
	st, err := c.sess.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("control: open stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() {
		// Tell the server to kill the process, then drop the stream.
		_ = writeFrame(st, frameCancel, nil)
		st.Close()
	})
	done := func() {
		stop()
		st.Close()
	}
	if err := writeRequest(st, req); err != nil {
		done()
		return nil, nil, fmt.Errorf("control: send request: %w", err)
	}
	return st, done, nil
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	st, done, err := c.call(ctx, &Request{Op: OpPing})
	if err != nil {
		return err
	}
	defer done()
	_, err = readAnswer(ctx, st, nil, nil, nil)
	return err
}

// readAnswer copies output frames until the status frame.
func readAnswer(ctx context.Context, r io.Reader, stdout, stderr, data io.Writer) (Status, error) {
	br := bufio.NewReader(r)
	for {
		kind, p, err := readFrame(br)
		if err != nil {
			if ctx.Err() != nil {
				return Status{}, ctx.Err()
			}
			return Status{}, fmt.Errorf("control: connection lost: %w", err)
		}
		var w io.Writer
		switch kind {
		case frameStdout:
			w = stdout
		case frameStderr:
			w = stderr
		case frameData:
			w = data
		case frameStatus:
			var st Status
			if err := json.Unmarshal(p, &st); err != nil {
				return Status{}, fmt.Errorf("control: bad status: %w", err)
			}
			return st, nil
		default:
			return Status{}, fmt.Errorf("control: unexpected frame kind %d", kind)
		}
		if w != nil {
			if _, err := w.Write(p); err != nil {
				return Status{}, err
			}
		}
	}
}

// Cmd describes a command to run in the guest.
type Cmd struct {
	Argv   []string
	Env    []string // added to the agent's environment
	Dir    string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// ExitError reports a command that ran and failed.
type ExitError struct {
	Argv     []string
	ExitCode int
	Signal   string
	// Stderr is the end of the command's error output, when it was captured.
	Stderr string
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.ExitCode)
	if e.Signal != "" {
		how = "killed by " + e.Signal
	}
	msg := fmt.Sprintf("%s: %s", strings.Join(e.Argv, " "), how)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

// Process is a command started in the guest.
type Process struct {
	cmd    *Cmd
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// Start runs cmd in the guest. The command is killed when ctx ends or Kill is
// called; Wait returns its outcome.
func (c *Client) Start(ctx context.Context, cmd *Cmd) (*Process, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, done, err := c.call(ctx, &Request{
		Op: OpExec, Argv: cmd.Argv, Env: cmd.Env, Dir: cmd.Dir, Stdin: cmd.Stdin != nil,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), cancel: cancel}
	if cmd.Stdin != nil {
		go func() {
			fw := frameWriter{w: st, kind: frameStdin}
			buf := make([]byte, 32<<10)
			for {
				n, err := cmd.Stdin.Read(buf)
				if n > 0 {
					if _, werr := fw.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					_ = writeFrame(st, frameStdinEOF, nil)
					return
				}
			}
		}()
	}
	go func() {
		defer close(p.done)
		defer done()
		defer cancel()
		stderr := &tailBuffer{max: 4096}
		var errw io.Writer = stderr
		if cmd.Stderr != nil {
			errw = io.MultiWriter(cmd.Stderr, stderr)
		}
		res, err := readAnswer(ctx, st, cmd.Stdout, errw, nil)
		switch {
		case err != nil:
			p.err = fmt.Errorf("%s: %w", strings.Join(cmd.Argv, " "), err)
		case res.Err != "":
			p.err = fmt.Errorf("%s: %s", strings.Join(cmd.Argv, " "), res.Err)
		case res.ExitCode != 0 || res.Signal != "":
			p.err = &ExitError{Argv: cmd.Argv, ExitCode: res.ExitCode, Signal: res.Signal,
				Stderr: strings.TrimSpace(stderr.String())}
		}
	}()
	return p, nil
}

// Wait waits for the process and returns nil if it exited with status 0.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Kill ends the process and waits for it.
func (p *Process) Kill() {
	p.cancel()
	<-p.done
}

// Run runs cmd and waits for it.
func (c *Client) Run(ctx context.Context, cmd *Cmd) error {
	p, err := c.Start(ctx, cmd)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Output runs argv and returns its standard output.
func (c *Client) Output(ctx context.Context, argv ...string) (string, error) {
	var out bytes.Buffer
	err := c.Run(ctx, &Cmd{Argv: argv, Stdout: &out})
	return out.String(), err
}

// WriteFile writes data to path in the guest, atomically.
func (c *Client) WriteFile(ctx context.Context, path string, data io.Reader, mode uint32) error {
	st, done, err := c.call(ctx, &Request{Op: OpPut, Path: path, Mode: mode})
	if err != nil {
		return err
	}
	defer done()
	if _, err := io.Copy(frameWriter{w: st, kind: frameData}, data); err != nil {
		return fmt.Errorf("control: put %s: %w", path, err)
	}
	if err := writeFrame(st, frameDataEOF, nil); err != nil {
		return fmt.Errorf("control: put %s: %w", path, err)
	}
	res, err := readAnswer(ctx, st, nil, nil, nil)
	if err != nil {
		return err
	}
	if res.Err != "" {
		return fmt.Errorf("control: put %s: %s", path, res.Err)
	}
	return nil
}

// ReadFile copies the guest file at path to w.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer) error {
	st, done, err := c.call(ctx, &Request{Op: OpGet, Path: path})
	if err != nil {
		return err
	}
	defer done()
	res, err := readAnswer(ctx, st, nil, nil, w)
	if err != nil {
		return err
	}
	if res.Err != "" {
		return fmt.Errorf("control: get %s: %s", path, res.Err)
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

// IsExit reports whether err is a command's non-zero exit.
func IsExit(err error) bool {
	var ee *ExitError
	return errors.As(err, &ee)
}
