// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/checkpoint"
)

// The memory of a migration's final dump goes to the destination as CRIU
// dumps it, not in the checkpoint: the source's CRIU sends the pages to
// a page server (CRIU's own protocol), which a pageStream carries over
// the agents' TLS connection to a CRIU page server on the destination
// (Destination.TakePages). The rest of the checkpoint follows, small.

// finalPages names the directory of the final dump's pages, beside the
// pre-dumps (pre-N), under the migration's directory on the destination.
const finalPages = "pages"

// pagesDir is where the final dump's pages of the migration with token
// land on the destination.
func pagesDir(token string) string { return filepath.Join(PreDumpRoot, token, finalPages) }

// What the destination sends back is framed: a kind byte, a 4-byte
// big-endian length and the bytes. The source's CRIU reads the page
// server's answers; the last frame says how the page server ended (a
// trailer would not do: the destination ends its answer before the
// source ends what it sends, which resets the stream).
const (
	frameAnswer = 'a' // answer bytes of the page server
	frameEnd    = 'e' // the page server ended: "" or its error
	maxFrame    = 1 << 20
)

func writeFrame(w io.Writer, kind byte, p []byte) error {
	b := make([]byte, 5, 5+len(p))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], uint32(len(p)))
	// One write: each reaches the source as it is made.
	_, err := w.Write(append(b, p...))
	return err
}

// answers writes what it is given as answer frames.
type answers struct{ w io.Writer }

func (a answers) Write(p []byte) (int, error) {
	if err := writeFrame(a.w, frameAnswer, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readFrames writes the answers framed in r to w until the end frame;
// ended is the page server's error the end frame carries, err a failure
// of the stream.
func readFrames(w io.Writer, r io.Reader) (ended, err error) {
	br := bufio.NewReader(r)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return nil, fmt.Errorf("the destination's answers ended early: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > maxFrame {
			return nil, fmt.Errorf("the destination sent a frame of %d bytes", n)
		}
		switch hdr[0] {
		case frameAnswer:
			if _, err := io.CopyN(w, br, int64(n)); err != nil {
				return nil, err
			}
		case frameEnd:
			msg := make([]byte, n)
			if _, err := io.ReadFull(br, msg); err != nil {
				return nil, err
			}
			if n > 0 {
				return errors.New(string(msg)), nil
			}
			return nil, nil
		default:
			return nil, fmt.Errorf("the destination sent a frame of kind %q", hdr[0])
		}
	}
}

// validPreDump: a page server's parent, or its images, is one of the
// migration's pre-dumps.
var validPreDump = regexp.MustCompile(`^pre-[0-9]+$`)

// pageStream carries a dump's pages from this host's CRIU, which
// connects to Addr (on loopback), to the destination's page server.
type pageStream struct {
	ln       net.Listener
	d        *agent.Duplex
	s        *stream // what CRIU sends, counted and paced
	accepted atomic.Bool
	done     chan struct{}
	err      error  // once done
	withdraw func() // the request to the shim, if it was not taken
}

// openPageStream opens a page server on dest for images name (a
// pre-dump, or finalPages) of the migration with token, on top of parent
// (one of its pre-dumps, "" for none), and listens for CRIU; limit caps
// what it sends, in bytes per second.
func openPageStream(ctx context.Context, dest *agent.Client, token, name, parent string, limit int64) (*pageStream, error) {
	q := url.Values{"token": {token}, "name": {name}}
	if parent != "" {
		q.Set("parent", parent)
	}
	d, err := dest.Open(ctx, "/v1/pages?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		d.Close()
		return nil, err
	}
	p := &pageStream{ln: ln, d: d, done: make(chan struct{})}
	p.s = newStream(nil, limit)
	go p.serve()
	return p, nil
}

// Addr is where CRIU sends the pages.
func (p *pageStream) Addr() string { return p.ln.Addr().String() }

// serve carries one connection of CRIU's both ways until both ends
// close it.
func (p *pageStream) serve() {
	defer close(p.done)
	conn, err := p.accept()
	if err != nil {
		p.d.Close()
		p.err = err
		return
	}
	p.accepted.Store(true)
	defer conn.Close()
	p.s.r, p.s.start = conn, time.Now()
	up := make(chan error, 1)
	go func() {
		_, err := io.Copy(p.d, p.s)
		if err == nil {
			err = p.d.CloseWrite()
		} else {
			// CRIU must not wait for answers that cannot come.
			conn.Close()
		}
		up <- err
	}()
	ended, err := readFrames(conn, p.d)
	if err != nil {
		p.d.Close()
	}
	// The page server is done: CRIU reads the end after its last answer
	// (or instead of the answer it waits for), and ends its side.
	_ = conn.(*net.TCPConn).CloseWrite()
	_ = conn.SetReadDeadline(time.Now().Add(pagesTimeout))
	uerr := <-up
	switch {
	case err != nil:
		p.err = err
	case ended != nil:
		p.err = fmt.Errorf("the destination's %w", ended)
	default:
		// The page server had it all: it ends only once CRIU is done.
		_ = uerr
	}
}

// accept takes the first connection made from a socket of this agent's
// user (CRIU's: root); it closes any other.
func (p *pageStream) accept() (net.Conn, error) {
	defer p.ln.Close()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := loopbackOwner(conn)
		if err == nil && uid == uint32(os.Geteuid()) {
			return conn, nil
		}
		conn.Close()
	}
}

// sent is how many bytes of pages went so far.
func (p *pageStream) sent() int64 { return p.s.sent() }

// Wait waits for the stream to end, once CRIU's dump is over, and says
// whether all the pages got to the destination's page server.
func (p *pageStream) Wait(ctx context.Context) error {
	if !p.accepted.Load() {
		p.Close()
		return errors.New("CRIU did not send the pages to the page server")
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.Close()
		return ctx.Err()
	}
	if p.err != nil {
		return fmt.Errorf("the pages' stream: %w", p.err)
	}
	return nil
}

// Close ends the stream; its error is why it broke, if it did before.
func (p *pageStream) Close() error {
	if p.withdraw != nil {
		p.withdraw()
	}
	p.ln.Close()
	p.d.Close()
	<-p.done
	if p.accepted.Load() && p.err != nil {
		return fmt.Errorf("the pages' stream: %w", p.err)
	}
	return nil
}

// pageServers are the page servers an agent ran, by migration token.
type pageServers struct {
	mu sync.Mutex
	m  map[string]*pageServer
}

type pageServer struct {
	done chan struct{}
	err  error // once done
}

// start records the page server of images name of token; an error if it
// has one.
func (s *pageServers) start(token, name string) (*pageServer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*pageServer{}
	}
	key := token + "/" + name
	if _, ok := s.m[key]; ok {
		return nil, fmt.Errorf("%w: pages of %s: already received", errdefs.ErrAlreadyExists, key)
	}
	ps := &pageServer{done: make(chan struct{})}
	s.m[key] = ps
	return ps, nil
}

// forget forgets token's page servers, done or not.
func (s *pageServers) forget(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.m {
		if strings.HasPrefix(k, token+"/") {
			delete(s.m, k)
		}
	}
}

// take is what became of the page server of images name of token,
// which it forgets; it waits for it to be done until ctx ends.
func (s *pageServers) take(ctx context.Context, token, name string) error {
	s.mu.Lock()
	ps, ok := s.m[token+"/"+name]
	delete(s.m, token+"/"+name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: the checkpoint's memory was not sent here", errdefs.ErrFailedPrecondition)
	}
	select {
	case <-ps.done:
		return ps.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TakePages runs a CRIU page server for images name of the migration
// with token (a pre-dump, or finalPages), on top of its pre-dump parent
// ("" for none), over the stream of r (what the source's CRIU sends) and
// w (its answers); the pages land in the migration's directory, under
// name. It returns once the page server is done.
func (d *Destination) TakePages(ctx context.Context, token, name, parent string, r io.Reader, w http.ResponseWriter) error {
	if !validToken.MatchString(token) || (name != finalPages && !validPreDump.MatchString(name)) ||
		(parent != "" && !validPreDump.MatchString(parent)) {
		return fmt.Errorf("%w: pages %q of %q on top of %q", errdefs.ErrInvalidArgument, name, token, parent)
	}
	return d.servePages(ctx, token, filepath.Join(PreDumpRoot, token, name), parent, r, w)
}

// servePages is TakePages into dir.
func (d *Destination) servePages(ctx context.Context, token, dir, parent string, r io.Reader, w http.ResponseWriter) error {
	if parent != "" {
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), parent)); err != nil {
			return fmt.Errorf("%w: pages of %s: their parent: %w", errdefs.ErrFailedPrecondition, token, err)
		}
	}
	ps, err := d.pages.start(token, filepath.Base(dir))
	if err != nil {
		return err
	}
	out, err := d.runPageServer(ctx, dir, parent, r, w)
	if err != nil {
		os.RemoveAll(dir)
		err = fmt.Errorf("pages of %s: %w", token, err)
	}
	ps.err = err
	close(ps.done)
	if out == nil {
		return err
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	_ = writeFrame(out, frameEnd, []byte(msg))
	return nil
}

// runPageServer runs CRIU's page server into dir, over r and w, until
// the stream or ctx ends; out is where it answered, nil if it did not.
func (d *Destination) runPageServer(ctx context.Context, dir, parent string, r io.Reader, w http.ResponseWriter) (io.Writer, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	if parent != "" {
		if err := os.Symlink(filepath.Join("..", parent), filepath.Join(dir, "parent")); err != nil {
			return nil, err
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "pages"), os.NewFile(uintptr(fds[1]), "pages")
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, err
	}
	defer conn.Close()
	log := filepath.Join(filepath.Dir(dir), "page-server.log")
	criu := d.CRIU
	if criu == "" {
		criu = "criu"
	}
	// It ends when the stream does, or with the request or the agent.
	cmd := exec.CommandContext(ctx, criu, "page-server", "--images-dir", dir, "--ps-socket", "3", "-v4", "-o", log)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("CRIU's page server: %w", err)
	}
	out, err := agent.DuplexAnswer(w)
	if err != nil {
		conn.Close()
		_ = cmd.Wait()
		return nil, err
	}
	go func() {
		// Until the source ends its side, or the page server its.
		_, _ = io.Copy(conn, r)
		_ = conn.(*net.UnixConn).CloseWrite()
	}()
	_, cerr := io.Copy(answers{out}, conn)
	conn.Close()
	if err := cmd.Wait(); err != nil {
		return out, fmt.Errorf("CRIU's page server: %w%s", err, checkpoint.LogErrors(log))
	}
	if cerr != nil {
		return out, fmt.Errorf("answering the source: %w", cerr)
	}
	return out, nil
}

// pagesTimeout bounds how long a restore waits for its pages' page
// server to finish (it has, unless the source's answer was lost).
const pagesTimeout = time.Minute
