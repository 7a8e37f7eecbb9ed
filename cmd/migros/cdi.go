// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/migros/migros/runtime/rdmadev"
)

// defaultCDISpec is where cdi writes the spec: CDI's directory for specs
// generated at run time (the host's RDMA devices come and go with rdma
// link add/delete).
const defaultCDISpec = "/var/run/cdi/migros.io-rdma.json"

// cdiCmd writes a CDI spec of the host's RDMA devices, so that engines
// that take CDI names hand them to containers: ctr run --device
// migros.io/rdma=all (or =rxe0).
func cdiCmd(args []string) error {
	fs := flag.NewFlagSet("cdi", flag.ExitOnError)
	out := fs.String("output", defaultCDISpec, `file to write the spec to ("-": standard output)`)
	fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	nodes, err := rdmadev.Host{}.Nodes()
	if err != nil {
		return err
	}
	spec, err := rdmadev.CDISpec(nodes)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if *out == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	// Engines may read the directory at any time: never a partial spec.
	tmp := *out + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		os.Remove(tmp)
		return err
	}
	var names []string
	for _, d := range spec.Devices {
		names = append(names, rdmadev.CDIKind+"="+d.Name)
	}
	fmt.Printf("%s: %v\n", *out, names)
	return nil
}
