// SPDX-License-Identifier: Apache-2.0

package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
)

// PageServer asks that a container's next checkpoint send its memory
// pages to a CRIU page server, as CRIU dumps them, instead of writing
// them into the checkpoint: a migration streams them to the destination
// while the container is dumped. The shim that takes the checkpoint
// finds the request (TakePageServer), points CRIU at Address, and leaves
// in the checkpoint a link (PagesLink) to Dir, where the pages are on
// the host that restores it (LinkPages).
type PageServer struct {
	Address string `json:"address"` // HOST:PORT that CRIU connects to
	Dir     string `json:"dir"`     // the pages' directory where the checkpoint is restored
}

// PageServerRoot holds the requests, by namespace and container.
const PageServerRoot = "/run/migros/page-server"

// PagesLink is the symbolic link, in a checkpoint whose pages went to a
// page server, to the directory they are in on the restoring host.
const PagesLink = "migros-pages"

func pageServerPath(root, namespace, id string) (string, error) {
	for _, n := range []string{namespace, id} {
		if n == "" || !filepath.IsLocal(n) || strings.ContainsRune(n, '/') {
			return "", fmt.Errorf("%w: %q names no page server request", errdefs.ErrInvalidArgument, n)
		}
	}
	return filepath.Join(root, namespace, id+".json"), nil
}

// SetPageServer makes ps the request for container id's next checkpoint,
// under root (PageServerRoot); remove withdraws it if no checkpoint took
// it.
func SetPageServer(root, namespace, id string, ps PageServer) (remove func(), err error) {
	if _, _, err := net.SplitHostPort(ps.Address); err != nil || !filepath.IsAbs(ps.Dir) {
		return nil, fmt.Errorf("%w: page server %+v", errdefs.ErrInvalidArgument, ps)
	}
	path, err := pageServerPath(root, namespace, id)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(ps)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, err
	}
	return func() { os.Remove(path) }, nil
}

// TakePageServer is the request for container id's checkpoint, which it
// removes; nil if there is none.
func TakePageServer(root, namespace, id string) (*PageServer, error) {
	path, err := pageServerPath(root, namespace, id)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	os.Remove(path)
	var ps PageServer
	if err := json.Unmarshal(b, &ps); err != nil {
		return nil, fmt.Errorf("page server request %s: %w", path, err)
	}
	return &ps, nil
}

// CRIUConfig is the CRIU configuration (CRIU_CONFIG_FILE, which CRIU
// reads before what runc asks) that sends a dump's pages to ps.
func (ps PageServer) CRIUConfig() (string, error) {
	host, port, err := net.SplitHostPort(ps.Address)
	if err != nil {
		return "", fmt.Errorf("%w: page server %q: %w", errdefs.ErrInvalidArgument, ps.Address, err)
	}
	return fmt.Sprintf("page-server\naddress %s\nport %s\n", host, port), nil
}

// pageImage names the images a page server writes: each process's (and
// shared memory's) pagemap and the pages it maps.
var pageImage = regexp.MustCompile(`^(pagemap|pages|pagemap-shmem)-[0-9]+\.img$`)

// LinkPages puts into checkpoint dir, restored on this host, links to
// its page images, if they went to a page server (PagesLink): CRIU finds
// them among the checkpoint's own images. PagesLink must be absolute. It is an error if they are
// not on this host, or if the checkpoint has page images of its own.
func LinkPages(dir string) error {
	pages, err := os.Readlink(filepath.Join(dir, PagesLink))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil && !filepath.IsAbs(pages) {
		err = fmt.Errorf("%s names %q, not an absolute path", PagesLink, pages)
	}
	if err != nil {
		return fmt.Errorf("%w: checkpoint %s: %w", errdefs.ErrInvalidArgument, dir, err)
	}
	ents, err := os.ReadDir(pages)
	if err != nil {
		return fmt.Errorf("%w: checkpoint %s: its memory, sent to a page server, is not on this host: %w",
			errdefs.ErrFailedPrecondition, dir, err)
	}
	// Relative: CRIU's restored process opens them from inside the
	// container's root, through the images directory it holds open.
	rel, err := filepath.Rel(dir, pages)
	if err != nil {
		return fmt.Errorf("%w: checkpoint %s: its pages %s: %w", errdefs.ErrInvalidArgument, dir, pages, err)
	}
	n := 0
	for _, e := range ents {
		if !e.Type().IsRegular() || !pageImage.MatchString(e.Name()) {
			continue
		}
		if err := os.Symlink(filepath.Join(rel, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("%w: checkpoint %s: its page image %s: %w", errdefs.ErrInvalidArgument, dir, e.Name(), err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: checkpoint %s: no page image in %s", errdefs.ErrFailedPrecondition, dir, pages)
	}
	return nil
}
