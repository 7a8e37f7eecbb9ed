// SPDX-License-Identifier: Apache-2.0

// Package image is the MigrOS RDMA image: what a checkpoint records of one
// uverbs file of a process, next to CRIU's images (rdma-<id>.img, <id>
// being CRIU's file id). Format, version 2, all integers little endian:
//
//	offset 0   magic "MGRSRDMA"
//	offset 8   version (u32)
//	offset 12  metadata length M (u32)
//	offset 16  metadata: Context as a gob stream (encoding/gob), which
//	           describes its own types; migros inspect prints it
//	16+M       blobs: ring contents, which the metadata references by
//	           offset and length relative to 16+M
//	end-4      CRC-32 (IEEE) of every byte before it
//
// Decode rejects anything else with an error that says what is wrong.
//
// Version 1 had JSON metadata. Decoding it cost more than creating the
// objects it describes (0.75 ms per QP under emulation, 15 times the gob
// decoding), and a restore reads the image in the blackout.
package image

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/migros/migros/rdma"
)

// Magic starts every image; Version is the one this package writes.
const (
	Magic   = "MGRSRDMA"
	Version = 2
)

// FileName is the image of CRIU file id.
func FileName(id int) string { return fmt.Sprintf("rdma-%d.img", id) }

// ErrCorrupt wraps every decoding error.
var ErrCorrupt = errors.New("corrupt RDMA image")

// Ring is the content of a queue buffer mapped into the process.
type Ring struct {
	Kind   string `json:"kind"`   // sq, rq, cq or srq
	Handle uint32 `json:"handle"` // of its QP, CQ or SRQ
	VA     uint64 `json:"va"`     // where the process maps it
	Offset uint64 `json:"offset"` // in the blobs
	Length uint64 `json:"length"`
	Data   []byte `json:"-"`
}

// Context is one uverbs file of a process.
type Context struct {
	PID        int               `json:"pid"`
	FD         int               `json:"fd"`     // its number in the process
	Device     string            `json:"device"` // e.g. /dev/infiniband/uverbs0
	EventFDs   []int             `json:"event_fds,omitempty"`
	Objects    *rdma.ContextDump `json:"objects"`
	Rings      []Ring            `json:"rings"`
	MigVersion string            `json:"migros_version"` // of the module that dumped it
	// GIDs of the device's ports when dumped: where the process' UD
	// QPs were reached, which they announce having left.
	GIDs []string `json:"gids,omitempty"`
}

// Encode lays out c as an image.
func Encode(c *Context) ([]byte, error) {
	var blobs bytes.Buffer
	for i := range c.Rings {
		r := &c.Rings[i]
		r.Offset, r.Length = uint64(blobs.Len()), uint64(len(r.Data))
		blobs.Write(r.Data)
	}
	// The ring contents go in the blobs, not in the metadata.
	meta := *c
	meta.Rings = make([]Ring, len(c.Rings))
	for i, r := range c.Rings {
		r.Data = nil
		meta.Rings[i] = r
	}
	var m bytes.Buffer
	if err := gob.NewEncoder(&m).Encode(&meta); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	var b bytes.Buffer
	b.WriteString(Magic)
	binary.Write(&b, binary.LittleEndian, uint32(Version))
	binary.Write(&b, binary.LittleEndian, uint32(m.Len()))
	b.Write(m.Bytes())
	b.Write(blobs.Bytes())
	binary.Write(&b, binary.LittleEndian, crc32.ChecksumIEEE(b.Bytes()))
	return b.Bytes(), nil
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// Decode reads an image.
func Decode(b []byte) (*Context, error) {
	const head = len(Magic) + 8
	if len(b) < head+4 {
		return nil, corrupt("%d bytes, too short for an image", len(b))
	}
	if string(b[:len(Magic)]) != Magic {
		return nil, corrupt("not an RDMA image (magic %q)", b[:len(Magic)])
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.ChecksumIEEE(body); got != sum {
		return nil, corrupt("checksum %#08x, image says %#08x (truncated or damaged)", got, sum)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != Version {
		return nil, corrupt("version %d, this migros reads %d", v, Version)
	}
	m := uint64(binary.LittleEndian.Uint32(b[12:]))
	if uint64(head)+m > uint64(len(body)) {
		return nil, corrupt("metadata of %d bytes overruns the image", m)
	}
	var c Context
	if err := gob.NewDecoder(bytes.NewReader(body[head : head+int(m)])).Decode(&c); err != nil {
		return nil, corrupt("metadata: %v", err)
	}
	if c.Objects == nil {
		return nil, corrupt("no objects")
	}
	blobs := body[head+int(m):]
	for i := range c.Rings {
		r := &c.Rings[i]
		if r.Offset > uint64(len(blobs)) || r.Length > uint64(len(blobs))-r.Offset {
			return nil, corrupt("%s ring of handle %d: bytes %d+%d outside the %d bytes of blobs",
				r.Kind, r.Handle, r.Offset, r.Length, len(blobs))
		}
		r.Data = blobs[r.Offset : r.Offset+r.Length]
	}
	return &c, nil
}
