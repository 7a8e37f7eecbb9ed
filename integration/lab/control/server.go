// SPDX-License-Identifier: Apache-2.0

package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// Server answers requests in a guest.
type Server struct {
	// Logf, when set, receives one line per failed request.
	Logf func(format string, args ...any)
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// ServePort serves the virtio-serial port at path until ctx ends. The port
// reads end-of-file while no host client is connected, and a host client
// may come and go, so every connection gets a fresh yamux session.
func (s *Server) ServePort(ctx context.Context, path string) error {
	for ctx.Err() == nil {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open control port: %w", err)
		}
		err = s.Serve(ctx, f)
		f.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			s.logf("control session ended: %v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return ctx.Err()
}

// Serve runs one session on conn until it fails or ctx ends.
func (s *Server) Serve(ctx context.Context, conn io.ReadWriteCloser) error {
	cfg := yamux.DefaultConfig()
	// The host may be absent for long; never time a session out.
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		return err
	}
	defer sess.Close()
	go func() {
		select {
		case <-ctx.Done():
			sess.Close()
		case <-sess.CloseChan():
		}
	}()
	for {
		st, err := sess.Accept()
		if err != nil {
			if sess.IsClosed() {
				return io.EOF
			}
			return err
		}
		go s.handle(ctx, st)
	}
}

// lockedWriter serialises frames written by several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) frame(kind byte, p []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return writeFrame(l.w, kind, p)
}

func (l *lockedWriter) status(st Status) error {
	b, _ := json.Marshal(st)
	return l.frame(frameStatus, b)
}

type kindWriter struct {
	l    *lockedWriter
	kind byte
}

func (k kindWriter) Write(p []byte) (int, error) {
	l := k.l
	l.mu.Lock()
	defer l.mu.Unlock()
	return frameWriter{w: l.w, kind: k.kind}.Write(p)
}

func (s *Server) handle(ctx context.Context, st net.Conn) {
	defer st.Close()
	br := bufio.NewReader(st)
	w := &lockedWriter{w: st}
	req, err := readRequest(br)
	if err != nil {
		s.logf("%v", err)
		_ = w.status(Status{ExitCode: -1, Err: err.Error()})
		return
	}
	var res Status
	switch req.Op {
	case OpPing:
	case OpExec:
		res = s.exec(ctx, req, br, w)
	case OpPut:
		res = put(req, br)
	case OpGet:
		res = get(req, w)
	default:
		res = Status{ExitCode: -1, Err: fmt.Sprintf("unknown op %q", req.Op)}
	}
	if res.Err != "" {
		s.logf("%s %v: %s", req.Op, req.Argv, res.Err)
	}
	_ = w.status(res)
}

func (s *Server) exec(ctx context.Context, req *Request, br *bufio.Reader, w *lockedWriter) Status {
	if len(req.Argv) == 0 {
		return Status{ExitCode: -1, Err: "exec: empty argv"}
	}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env = append(os.Environ(), req.Env...)
	cmd.Dir = req.Dir
	cmd.Stdout = kindWriter{w, frameStdout}
	cmd.Stderr = kindWriter{w, frameStderr}
	// Own process group, so that a cancel kills what the command started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdin io.WriteCloser
	if req.Stdin {
		p, err := cmd.StdinPipe()
		if err != nil {
			return Status{ExitCode: -1, Err: err.Error()}
		}
		stdin = p
	}
	if err := cmd.Start(); err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	kill := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			kill()
		case <-done:
		}
	}()
	// The client's frames: input, end of input, or cancel. A broken
	// stream means the client is gone: kill as for a cancel.
	go func() {
		for {
			kind, p, err := readFrame(br)
			if err != nil {
				select {
				case <-done:
				default:
					kill()
				}
				return
			}
			switch kind {
			case frameStdin:
				if stdin != nil {
					_, _ = stdin.Write(p)
				}
			case frameStdinEOF:
				if stdin != nil {
					stdin.Close()
				}
			case frameCancel:
				kill()
			}
		}
	}()
	err := cmd.Wait()
	// Take the whole process group down with the command, so that a
	// command cannot leave children behind holding its output open.
	kill()
	return exitStatus(err)
}

func exitStatus(err error) Status {
	if err == nil {
		return Status{}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return Status{ExitCode: -1, Signal: ws.Signal().String()}
		}
		return Status{ExitCode: ee.ExitCode()}
	}
	return Status{ExitCode: -1, Err: err.Error()}
}

func put(req *Request, br *bufio.Reader) Status {
	if !filepath.IsAbs(req.Path) {
		return Status{ExitCode: -1, Err: "put: path must be absolute"}
	}
	mode := os.FileMode(req.Mode)
	if mode == 0 {
		mode = 0o644
	}
	if err := os.MkdirAll(filepath.Dir(req.Path), 0o755); err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	tmp := req.Path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	for {
		kind, p, err := readFrame(br)
		if err != nil {
			f.Close()
			os.Remove(tmp)
			return Status{ExitCode: -1, Err: fmt.Sprintf("put: %v", err)}
		}
		if kind == frameDataEOF {
			break
		}
		if _, err := f.Write(p); err != nil {
			f.Close()
			os.Remove(tmp)
			return Status{ExitCode: -1, Err: err.Error()}
		}
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return Status{ExitCode: -1, Err: err.Error()}
	}
	if err := f.Close(); err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	if err := os.Rename(tmp, req.Path); err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	return Status{}
}

func get(req *Request, w *lockedWriter) Status {
	f, err := os.Open(req.Path)
	if err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	defer f.Close()
	if _, err := io.Copy(kindWriter{w, frameData}, f); err != nil {
		return Status{ExitCode: -1, Err: err.Error()}
	}
	return Status{}
}

// Logger returns a Logf that prefixes lines for the guest console.
func Logger(prefix string) func(string, ...any) {
	l := log.New(os.Stderr, prefix, 0)
	return l.Printf
}
