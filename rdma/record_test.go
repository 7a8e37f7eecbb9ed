// SPDX-License-Identifier: Apache-2.0

package rdma

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"reflect"
	"testing"
)

// slow is encoding/binary's layout, which encode and decode must match.
func slow(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// fill sets every settable field of the struct at p to random bytes.
func fill(r *rand.Rand, p any) {
	v := reflect.ValueOf(p).Elem()
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				if v.Type().Field(i).Name != "_" {
					walk(v.Field(i))
				}
			}
		case reflect.Array:
			for i := 0; i < v.Len(); i++ {
				walk(v.Index(i))
			}
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			v.SetUint(r.Uint64())
		case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			v.SetInt(r.Int63())
		case reflect.Bool:
			v.SetBool(r.Intn(2) == 1)
		}
	}
	walk(v)
}

func TestRecordsEncodeAsBinary(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for _, tc := range []struct {
		name string
		new  func() any // a pointer to a zero record
	}{
		{"QPDump", func() any { return new(QPDump) }},
		{"RespRes", func() any { return new(RespRes) }},
		{"RespProgress", func() any { return new(RespProgress) }},
		{"Events", func() any { return new(Events) }},
		{"CQDump", func() any { return new(CQDump) }},
		{"SRQDump", func() any { return new(SRQDump) }},
		{"MWDump", func() any { return new(MWDump) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < 20; i++ {
				p := tc.new()
				fill(r, p)
				v := reflect.ValueOf(p).Elem().Interface()
				want := slow(t, v)
				if got := encode(v); !bytes.Equal(got, want) {
					t.Fatalf("encode:\n% x\nwant\n% x", got, want)
				}
				back := tc.new()
				if err := decode(want, back); err != nil || !reflect.DeepEqual(back, p) {
					t.Fatalf("decode: %+v, %v; want %+v", back, err, p)
				}
				if err := decode(want[1:], back); err == nil {
					t.Fatal("decode of a short record succeeded")
				}
			}
		})
	}
	res := make([]RespRes, 3)
	for i := range res {
		fill(r, &res[i])
	}
	if got, want := encode(res), slow(t, res); !bytes.Equal(got, want) {
		t.Fatalf("encode of a slice:\n% x\nwant\n% x", got, want)
	}
}
