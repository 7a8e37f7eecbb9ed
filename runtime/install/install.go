// SPDX-License-Identifier: Apache-2.0

// Package install says where MigrOS' pieces are: its binaries (migros,
// migros-criu, containerd-shim-migros-v1) in one directory, its CRIU plugin in
// ../lib/criu from there. The build output (_output/bin, _output/lib/criu)
// and `make install` (PREFIX/bin, PREFIX/lib/criu) lay them out so.
package install

import (
	"os"
	"path/filepath"
)

// Paths of an installation.
type Paths struct {
	Helper    string // migros-criu, which the CRIU plugin runs
	PluginDir string // holds migros_criu.so; CRIU loads every plugin there
	ConfigDir string // the host's MigrOS configuration (/etc/migros)
}

// At is the installation whose binaries are in bin.
func At(bin string) Paths {
	return Paths{Helper: filepath.Join(bin, "migros-criu"), PluginDir: filepath.Join(bin, "..", "lib", "criu"),
		ConfigDir: "/etc/migros"}
}

// PKIDir holds the host's agent identity (package agent).
func (p Paths) PKIDir() string { return filepath.Join(p.ConfigDir, "pki") }

// IDRanges is the host's ID range policy file (package idrange).
func (p Paths) IDRanges() string { return filepath.Join(p.ConfigDir, "ids.conf") }

// CRIUConfig is the CRIU configuration file MigrOS runs CRIU with, next
// to the plugin (CRIU loads only *.so files from there as plugins).
func (p Paths) CRIUConfig() string { return filepath.Join(p.PluginDir, "migros.conf") }

// Beside is the installation the running binary belongs to.
func Beside() Paths {
	exe, err := os.Executable()
	if err != nil {
		return At("/usr/local/bin")
	}
	return At(filepath.Dir(exe))
}
