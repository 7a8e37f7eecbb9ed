// SPDX-License-Identifier: Apache-2.0

package install

import "testing"

func TestAt(t *testing.T) {
	p := At("/opt/migros/bin")
	if p.Migros != "/opt/migros/bin/migros" || p.PluginDir != "/opt/migros/lib/criu" || p.CRIUConfig() != "/opt/migros/lib/criu/migros.conf" ||
		p.IDRanges() != "/etc/migros/ids.conf" {
		t.Fatalf("paths %+v, config %s", p, p.CRIUConfig())
	}
}
