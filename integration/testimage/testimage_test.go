// SPDX-License-Identifier: Apache-2.0

package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

func readArchive(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
	}
}

func blobOf(t *testing.T, files map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
	if !ok {
		t.Fatalf("archive lacks blob %s", digest)
	}
	sum := sha256.Sum256(b)
	if "sha256:"+hex.EncodeToString(sum[:]) != digest {
		t.Fatalf("blob %s does not match its digest", digest)
	}
	return b
}

// A small image of programs every Debian host has: the layout, digests,
// library closure and determinism are checked on it.
func TestBuild(t *testing.T) {
	spec := Spec{Ref: "localhost/test/img:v1", Programs: []string{"/usr/bin/env"}, Files: []string{"/etc/debian_version"}}
	var a, b bytes.Buffer
	d1, err := Build(context.Background(), spec, &a)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Build(context.Background(), spec, &b)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two builds of the same spec differ")
	}
	files := readArchive(t, a.Bytes())
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	if index.Manifests[0].Digest != d1 || index.Manifests[0].Annotations["io.containerd.image.name"] != spec.Ref {
		t.Fatalf("index names %+v", index.Manifests[0])
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blobOf(t, files, d1), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blobOf(t, files, manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("config diff_ids %v, layer %s", config.RootFS.DiffIDs, manifest.Layers[0].Digest)
	}
	layer := readArchive(t, blobOf(t, files, manifest.Layers[0].Digest))
	var names []string
	for n := range layer {
		names = append(names, n)
	}
	all := strings.Join(names, " ")
	for _, want := range []string{"usr/bin/env", "etc/debian_version", "libc.so.6", "ld-linux-x86-64.so.2", "lib64", "tmp/"} {
		if !strings.Contains(all, want) {
			t.Errorf("layer lacks %s; has %s", want, all)
		}
	}
}

func TestBuildMissingFile(t *testing.T) {
	spec := Spec{Ref: "localhost/t:1", Programs: []string{"/nonexistent/prog"}}
	if _, err := Build(context.Background(), spec, io.Discard); err == nil {
		t.Fatal("built an image of a missing program")
	}
}
