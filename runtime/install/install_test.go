// SPDX-License-Identifier: Apache-2.0

package install

import "testing"

func TestAt(t *testing.T) {
	p := At("/opt/migros/bin")
	if p.Helper != "/opt/migros/bin/migros-criu" || p.PluginDir != "/opt/migros/lib/criu" || p.CRIUConfig() != "/opt/migros/lib/criu/migros.conf" ||
		p.IDRanges() != "/etc/migros/ids.conf" {
		t.Fatalf("paths %+v, config %s", p, p.CRIUConfig())
	}
}
