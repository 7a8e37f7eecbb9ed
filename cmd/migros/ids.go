// SPDX-License-Identifier: Apache-2.0

package main

import (
	"flag"
	"fmt"

	"github.com/migros/migros/runtime/idrange"
	"github.com/migros/migros/runtime/install"
)

// idsCmd shows the host's ID range policy, as configured and as in
// effect in rdma_rxe, and with --apply puts the configured one in effect
// (the shim does so before each RDMA container is created).
func idsCmd(args []string) error {
	fs := flag.NewFlagSet("ids", flag.ExitOnError)
	path := fs.String("config", install.Beside().IDRanges(), "the policy file")
	apply := fs.Bool("apply", false, "put the policy in effect")
	fs.Parse(args)
	p, err := idrange.Load(*path)
	if err != nil {
		return err
	}
	if p == nil {
		fmt.Printf("%s: no policy (IDs come from the whole range)\n", *path)
	} else {
		fmt.Printf("%s: %v\n", *path, p)
	}
	if *apply {
		if p == nil {
			return fmt.Errorf("no policy to apply: %s does not exist", *path)
		}
		if err := p.Apply(idrange.ParamsDir); err != nil {
			return err
		}
	}
	cur, err := idrange.Current(idrange.ParamsDir)
	if err != nil {
		return err
	}
	fmt.Printf("rdma_rxe: %v\n", cur)
	return nil
}
