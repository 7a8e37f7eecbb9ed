// SPDX-License-Identifier: Apache-2.0

// Package control is the lab's control channel between the host-side test
// driver and the agent in each guest. It runs over one byte stream (a QEMU
// virtio-serial port) multiplexed with yamux: every request gets a stream of
// its own, so a test can keep a server process running in a guest while it
// runs other commands there.
//
// On a stream the client writes one JSON Request line, then frames; the
// server answers with frames. A frame is a one-byte kind, a big-endian uint32
// length and that many bytes.
package control

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Operations a Request may ask for.
const (
	OpPing = "ping"
	OpExec = "exec"
	OpPut  = "put"
	OpGet  = "get"
)

// Request is the first line a client writes on a new stream.
type Request struct {
	Op   string   `json:"op"`
	Argv []string `json:"argv,omitempty"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	// Stdin says the client streams the process' standard input as
	// frameStdin frames ended by frameStdinEOF; otherwise it is /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Path and Mode name the file of a put or get.
	Path string `json:"path,omitempty"`
	Mode uint32 `json:"mode,omitempty"`
}

// Status ends every answer.
type Status struct {
	// ExitCode of an exec, -1 when the process was killed by a signal.
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	// Err says why the request could not be carried out (bad request,
	// command not found, file not readable); empty on success.
	Err string `json:"err,omitempty"`
}

const (
	frameStdout   byte = 1 // server: process output
	frameStderr   byte = 2 // server: process error output
	frameData     byte = 3 // either way: file content
	frameStatus   byte = 4 // server: JSON Status, last frame
	frameStdin    byte = 5 // client: process input
	frameStdinEOF byte = 6 // client: end of input
	frameDataEOF  byte = 7 // client: end of a put's content
	frameCancel   byte = 8 // client: kill the process (context cancelled)
)

// maxFrame bounds a frame so that a corrupt stream cannot make us allocate
// without limit.
const maxFrame = 1 << 20

// writeFrame writes a frame with one Write, so that frames written to a
// yamux stream by different goroutines never interleave.
func writeFrame(w io.Writer, kind byte, p []byte) error {
	b := make([]byte, 5+len(p))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], uint32(len(p)))
	copy(b[5:], p)
	_, err := w.Write(b)
	return err
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("control: frame of %d bytes exceeds %d", n, maxFrame)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, fmt.Errorf("control: short frame: %w", err)
	}
	return hdr[0], p, nil
}

// frameWriter turns Writes into frames of one kind.
type frameWriter struct {
	w    io.Writer
	kind byte
}

func (f frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += maxFrame {
		end := min(off+maxFrame, len(p))
		if err := writeFrame(f.w, f.kind, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

func writeRequest(w io.Writer, req *Request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// maxRequest bounds the request line.
const maxRequest = 1 << 20

func readRequest(br *bufio.Reader) (*Request, error) {
	var line []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > maxRequest {
			return nil, errors.New("control: request line too long")
		}
		if !isPrefix {
			break
		}
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return nil, fmt.Errorf("control: bad request: %w", err)
	}
	return &req, nil
}
