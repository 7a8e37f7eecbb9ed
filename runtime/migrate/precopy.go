// SPDX-License-Identifier: Apache-2.0

package migrate

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"encoding/json"
	"net/http"
	"net/url"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/migros/migros/runtime/agent"
	"github.com/migros/migros/runtime/checkpoint"
	"github.com/migros/migros/runtime/install"
)

// PreDumpRoot holds the pre-dumps of migrations under way, on both
// hosts: the final dump names its parent by path, and the destination's
// CRIU finds it at the same path.
const PreDumpRoot = "/var/lib/migros/migrate"

// preDumpDir is round's pre-dump of the migration with token.
func preDumpDir(token string, round int) string {
	return filepath.Join(PreDumpRoot, token, fmt.Sprintf("pre-%d", round))
}

// validToken: a token names a directory.
var validToken = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// RuncRoot is where containerd's runc shim keeps runc's state, by
// namespace.
const RuncRoot = "/run/containerd/runc"

// preDump pre-dumps container id's memory into dir, on top of parent (""
// for none): runc's CRIU pre-dump, which leaves the container running
// and starts tracking which pages it writes next. CRIU loads MigrOS'
// plugin, which knows the mappings of RDMA devices. With pageServer
// (HOST:PORT), the pages go there instead of into dir.
func preDump(ctx context.Context, paths install.Paths, namespace, id, dir, parent, pageServer string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	args := []string{"--root", filepath.Join(RuncRoot, namespace), "checkpoint", "--pre-dump",
		"--image-path", dir, "--work-path", dir}
	if parent != "" {
		args = append(args, "--parent-path", parent)
	}
	if pageServer != "" {
		args = append(args, "--page-server", pageServer)
	}
	cmd := exec.CommandContext(ctx, "runc", append(args, id)...)
	cmd.Env = append(os.Environ(), "CRIU_LIBS_DIR="+paths.PluginDir, "MIGROS_BIN="+paths.Helper)
	if out, err := cmd.CombinedOutput(); err != nil {
		// runc quotes all of CRIU's log: its last line and CRIU's
		// errors say it.
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("pre-dump of %s: %w: %s%s", id, err, lines[len(lines)-1],
			checkpoint.LogErrors(filepath.Join(dir, "dump.log")))
	}
	return nil
}

// checkPreDumpRoom says whether PreDumpRoot has room for a pre-dump of
// size bytes (a container's memory).
func checkPreDumpRoom(size int64) error {
	dir := PreDumpRoot
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	if free := int64(st.Bavail) * st.Bsize; free < size {
		return fmt.Errorf("%s free in %s, a pre-dump needs about %s", mib(free), dir, mib(size))
	}
	return nil
}

// writeDir writes the regular files and symbolic links of dir to w, as a
// tar stream.
func writeDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() {
			return nil
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name, _ = filepath.Rel(dir, path)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// readDir writes the files and symbolic links of the tar stream r into
// dir, which must not exist; a name that leaves dir is refused.
func readDir(r io.Reader, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if !filepath.IsLocal(name) {
			return fmt.Errorf("%w: %q leaves the pre-dump", errdefs.ErrInvalidArgument, h.Name)
		}
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, path); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %q is not a file", errdefs.ErrInvalidArgument, h.Name)
		}
	}
}

// withParent makes a checkpoint on top of pre-dump dir.
func withParent(dir string) containerd.CheckpointOpts {
	return func(_ context.Context, _ *containerd.Client, _ *containers.Container, _ *ocispec.Index,
		o *options.CheckpointOptions) error {
		o.ParentPath = dir
		return nil
	}
}

// streamPreDump pre-dumps round of req's pre-copy with its pages streamed
// to a page server on dest, on top of the round before; the rest of the
// pre-dump stays here, where the next dump reads it.
func streamPreDump(ctx context.Context, dest *agent.Client, paths install.Paths, req *Request, round int, o Options) error {
	name, parent := filepath.Base(preDumpDir(req.Token, round)), ""
	if round > 1 {
		parent = filepath.Base(preDumpDir(req.Token, round-1))
	}
	p, err := openPageStream(ctx, dest, req.Token, name, parent, o.Bandwidth)
	if err != nil {
		return fmt.Errorf("page server on the destination: %w", err)
	}
	defer p.Close()
	defer tick(o, PhasePreCopy, p.sent)()
	rel := ""
	if parent != "" {
		rel = "../" + parent
	}
	if err := preDump(ctx, paths, o.Namespace, o.ID, preDumpDir(req.Token, round), rel, p.Addr()); err != nil {
		if perr := p.Close(); perr != nil {
			err = fmt.Errorf("%w; %w", err, perr)
		}
		return err
	}
	return p.Wait(ctx)
}

// preCopyHeader carries a pre-dump's round.
const preCopyHeader = "Migros-Pre-Copy"

// PreCopy names a pre-dump sent to the destination.
type PreCopy struct {
	Token string `json:"token"`
	Round int    `json:"round"`
}

// sendPreDump sends pre-dump dir, round of the migration with token.
func sendPreDump(ctx context.Context, dest *agent.Client, token string, round int, dir string, o Options) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeDir(pw, dir)) }()
	defer pr.Close()
	body := newStream(pr, o.Bandwidth)
	trailer := http.Header{digestTrailer: nil}
	hdr, _ := json.Marshal(PreCopy{Token: token, Round: round})
	return dest.Send(ctx, http.MethodPost, "/v1/precopy", &digestOnEOF{stream: body, trailer: trailer},
		http.Header{preCopyHeader: {string(hdr)}}, trailer, nil)
}

// dropPreDumps tells the destination to drop the pre-dumps of token, if
// it can be told.
func dropPreDumps(ctx context.Context, dest *agent.Client, token string) {
	_ = dest.Do(ctx, http.MethodDelete, "/v1/precopy?"+url.Values{"token": {token}}.Encode(), nil, nil, nil)
}

// TakePreDump stores a pre-dump from r, checking its digest against
// trailer's once r ends.
func (d *Destination) TakePreDump(p PreCopy, r io.Reader, trailer http.Header) error {
	if !validToken.MatchString(p.Token) || p.Round < 1 {
		return fmt.Errorf("%w: pre-copy %q round %d", errdefs.ErrInvalidArgument, p.Token, p.Round)
	}
	dir := preDumpDir(p.Token, p.Round)
	in := newStream(r, 0)
	err := readDir(in, dir)
	if err == nil {
		_, err = io.Copy(io.Discard, in)
	}
	if err == nil {
		err = checkDigest(trailer, in)
	}
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("pre-dump %d of %s: %w", p.Round, p.Token, err)
	}
	return nil
}

// DropPreDumps removes the pre-dumps of token.
func (d *Destination) DropPreDumps(token string) error {
	if !validToken.MatchString(token) {
		return fmt.Errorf("%w: pre-copy %q", errdefs.ErrInvalidArgument, token)
	}
	d.pages.forget(token)
	return os.RemoveAll(filepath.Join(PreDumpRoot, token))
}
