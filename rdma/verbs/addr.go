// SPDX-License-Identifier: Apache-2.0

package verbs

import "unsafe"

// addrOf is the address of b's first byte (memory the GC does not manage).
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }
