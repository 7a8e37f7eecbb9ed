// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"unsafe"
)

// The driver's records (dumps, progress, event counts) are structs of
// fixed-size fields in the kernel's layout. encoding/binary walks them
// field by field through reflection, which under emulation costs a good
// share of a QP's restore. Where a record has no padding, its memory on a
// little-endian machine is its encoding, and it is copied as it is.

var nativeLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// memory is v's bytes when they are exactly its little-endian encoding:
// v a struct, a pointer to one or a slice of them, without padding, on a
// little-endian machine. Otherwise nil.
func memory(v any) []byte {
	n := binary.Size(v)
	if !nativeLittleEndian || n <= 0 {
		return nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer:
		if rv.IsNil() || rv.Elem().Kind() != reflect.Struct || n != int(rv.Elem().Type().Size()) {
			return nil
		}
		return unsafe.Slice((*byte)(rv.UnsafePointer()), n)
	case reflect.Struct:
		if n != int(rv.Type().Size()) {
			return nil
		}
		p := reflect.New(rv.Type())
		p.Elem().Set(rv)
		return unsafe.Slice((*byte)(p.UnsafePointer()), n)
	case reflect.Slice:
		if rv.Len() == 0 || n != rv.Len()*int(rv.Type().Elem().Size()) {
			return nil
		}
		return unsafe.Slice((*byte)(rv.UnsafePointer()), n)
	}
	return nil
}

// encode lays out v, a record of fixed-size fields, as the kernel's.
func encode(v any) []byte {
	if m := memory(v); m != nil {
		return bytes.Clone(m)
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, v) // cannot fail for fixed-size values
	return b.Bytes()
}

// decode fills v, a struct of fixed-size fields laid out as the kernel's,
// from b, which must be exactly its size.
func decode(b []byte, v any) error {
	if n := binary.Size(v); n != len(b) {
		return fmt.Errorf("rdma: %T is %d bytes, kernel gave %d", v, n, len(b))
	}
	if m := memory(v); m != nil {
		copy(m, b)
		return nil
	}
	return binary.Read(bytes.NewReader(b), binary.LittleEndian, v)
}
