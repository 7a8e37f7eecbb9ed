// SPDX-License-Identifier: Apache-2.0

// Package testimage builds the lab's RDMA test image without a registry: an
// OCI image archive whose single layer holds unmodified RDMA programs from
// the host's Debian packages (perftest, ibverbs-utils), libibverbs with the
// rxe provider and its driver file, their shared-library closure, and
// busybox for a shell. The archive is deterministic: the same host files give
// the same digests, so guests and caches can tell when it changed.
package testimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Ref is the name the lab imports the test image under.
const Ref = "localhost/migros/rdma-test:latest"

// Spec says what goes into the image.
type Spec struct {
	Ref string
	// Programs are host executables copied with their library closure.
	Programs []string
	// Libraries are loaded at run time (dlopen) and copied with their
	// closure too.
	Libraries []string
	// Files are copied as they are.
	Files []string
	// Busybox is a static busybox; Applets become links to it in /usr/bin.
	Busybox string
	Applets []string
}

// DefaultSpec is the lab's RDMA test image.
func DefaultSpec() Spec {
	var progs []string
	for _, p := range []string{
		"ib_send_bw", "ib_send_lat", "ib_write_bw", "ib_write_lat", "ib_read_bw", "ib_read_lat",
		"ib_atomic_bw", "ib_atomic_lat",
		"ibv_rc_pingpong", "ibv_uc_pingpong", "ibv_ud_pingpong", "ibv_srq_pingpong",
		"ibv_xsrq_pingpong", "ibv_devinfo", "ibv_devices",
	} {
		progs = append(progs, "/usr/bin/"+p)
	}
	return Spec{
		Ref:       Ref,
		Programs:  progs,
		Libraries: []string{"/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so"},
		Files:     []string{"/etc/libibverbs.d/rxe.driver"},
		Busybox:   "/bin/busybox",
		Applets: []string{
			"sh", "cat", "cp", "date", "dd", "echo", "env", "false", "grep", "head", "hostname",
			"kill", "ls", "mkdir", "mv", "ps", "rm", "sed", "seq", "sha256sum", "sleep", "sort",
			"tail", "tee", "test", "touch", "tr", "true", "uname", "wc", "awk", "cmp", "od", "xargs",
		},
	}
}

// epoch is the timestamp of every file and of the image itself.
var epoch = time.Date(2021, 7, 14, 0, 0, 0, 0, time.UTC)

// entry is one file system object of the layer.
type entry struct {
	typ    byte // tar.TypeReg, TypeDir or TypeSymlink
	mode   int64
	src    string // host file for TypeReg
	target string // link target for TypeSymlink
}

type layer map[string]entry // image path (no leading slash) -> entry

func (l layer) dir(p string) {
	for p != "." && p != "/" && p != "" {
		if _, ok := l[p]; !ok {
			l[p] = entry{typ: tar.TypeDir, mode: 0o755}
		}
		p = path.Dir(p)
	}
}

// The image uses Debian's merged /usr: these top-level links are made
// explicitly, and host paths are stored under their canonical directory.
var mergedUsr = map[string]string{"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}

// add copies the host file p, following a chain of symbolic links and
// recording each link, under its canonical directory.
func (l layer) add(p string) error {
	for range 16 {
		dir, err := filepath.EvalSymlinks(filepath.Dir(p))
		if err != nil {
			return fmt.Errorf("testimage: %w", err)
		}
		p = filepath.Join(dir, filepath.Base(p))
		st, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("testimage: %w", err)
		}
		name := strings.TrimPrefix(p, "/")
		l.dir(path.Dir(name))
		if st.Mode()&os.ModeSymlink == 0 {
			if !st.Mode().IsRegular() {
				return fmt.Errorf("testimage: %s is not a regular file", p)
			}
			l[name] = entry{typ: tar.TypeReg, mode: int64(st.Mode().Perm()), src: p}
			return nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		l[name] = entry{typ: tar.TypeSymlink, mode: 0o777, target: target}
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target)
		}
		p = target
	}
	return fmt.Errorf("testimage: too many links at %s", p)
}

// libraries lists the shared libraries (and loader) that file needs, as
// ldd resolves them on this host.
func libraries(ctx context.Context, file string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", file).Output()
	if err != nil {
		return nil, fmt.Errorf("testimage: ldd %s: %w", file, err)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		case len(f) >= 3 && f[1] == "=>" && f[2] == "not":
			return nil, fmt.Errorf("testimage: %s: %s not found", file, f[0])
		}
	}
	return libs, nil
}

func (s Spec) layer(ctx context.Context) (layer, error) {
	l := layer{}
	for name, target := range mergedUsr {
		l[name] = entry{typ: tar.TypeSymlink, mode: 0o777, target: target}
		l.dir(target)
	}
	for _, d := range []string{"tmp", "etc", "proc", "sys", "dev", "root", "var/tmp", "usr/local/bin"} {
		l.dir(d)
	}
	for _, group := range [][]string{s.Programs, s.Libraries} {
		for _, p := range group {
			if err := l.add(p); err != nil {
				return nil, err
			}
			libs, err := libraries(ctx, p)
			if err != nil {
				return nil, err
			}
			for _, lib := range libs {
				if err := l.add(lib); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, f := range s.Files {
		if err := l.add(f); err != nil {
			return nil, err
		}
	}
	if s.Busybox != "" {
		st, err := os.Stat(s.Busybox)
		if err != nil {
			return nil, fmt.Errorf("testimage: busybox: %w", err)
		}
		l["usr/bin/busybox"] = entry{typ: tar.TypeReg, mode: int64(st.Mode().Perm()), src: s.Busybox}
		for _, a := range s.Applets {
			if _, ok := l["usr/bin/"+a]; !ok {
				l["usr/bin/"+a] = entry{typ: tar.TypeSymlink, mode: 0o777, target: "busybox"}
			}
		}
	}
	t := l["tmp"]
	t.mode = 0o1777
	l["tmp"] = t
	return l, nil
}

// writeTar writes the layer as a deterministic tar.
func (l layer) writeTar(w io.Writer) error {
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, n := range names {
		e := l[n]
		h := &tar.Header{Name: n, Typeflag: e.typ, Mode: e.mode, ModTime: epoch, Format: tar.FormatPAX}
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink:
			h.Linkname = e.target
		case tar.TypeReg:
			st, err := os.Stat(e.src)
			if err != nil {
				return err
			}
			h.Size = st.Size()
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if e.typ == tar.TypeReg {
			f, err := os.Open(e.src)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, h.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("testimage: copy %s: %w", e.src, err)
			}
		}
	}
	return tw.Close()
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type blob struct {
	digest string
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func blobPath(b blob) string { return "blobs/sha256/" + strings.TrimPrefix(b.digest, "sha256:") }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// Build writes the image as an OCI image-layout archive to w and returns
// the manifest digest.
func Build(ctx context.Context, s Spec, w io.Writer) (string, error) {
	l, err := s.layer(ctx)
	if err != nil {
		return "", err
	}
	var lb bytes.Buffer
	if err := l.writeTar(&lb); err != nil {
		return "", err
	}
	layerBlob := newBlob(lb.Bytes())
	config := newBlob(mustJSON(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd":        []string{"/bin/sh"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerBlob.digest}},
	}))
	manifest := newBlob(mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: config.digest, Size: int64(len(config.data))},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: layerBlob.digest, Size: int64(len(layerBlob.data))}},
	}))
	index := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest:    manifest.digest,
			Size:      int64(len(manifest.data)),
			Platform:  &platform{Architecture: "amd64", OS: "linux"},
			Annotations: map[string]string{
				"io.containerd.image.name":          s.Ref,
				"org.opencontainers.image.ref.name": s.Ref[strings.LastIndex(s.Ref, ":")+1:],
			},
		}},
	})
	tw := tar.NewWriter(w)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(config), config.data},
		{blobPath(layerBlob), layerBlob.data},
		{blobPath(manifest), manifest.data},
	}
	for _, f := range files {
		h := &tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := tw.Write(f.data); err != nil {
			return "", err
		}
	}
	return manifest.digest, tw.Close()
}
