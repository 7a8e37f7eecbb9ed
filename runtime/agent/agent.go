// SPDX-License-Identifier: Apache-2.0

// Package agent is the MigrOS agent: a small daemon on each host, next
// to containerd, that serves migrations to other hosts' agents over TCP
// with mutual TLS. Every agent holds a certificate of one CA (Init makes
// them); an agent serves only clients with such a certificate, and a
// client talks only to agents with one for the address it dials.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// DefaultPort is the agents' TCP port.
const (
	DefaultPort       = "7430"
	DefaultPortNumber = 7430
)

// Info describes an agent's host.
type Info struct {
	Host string `json:"host"`
	// RxeVersion is the MigrOS patch series of the host's rdma_rxe
	// ("" without MigrOS' rxe).
	RxeVersion string `json:"rxe_version"`
}

// HostInfo is this host's Info.
func HostInfo() Info {
	name, _ := os.Hostname()
	v, _ := os.ReadFile("/sys/module/rdma_rxe/parameters/migros_version")
	return Info{Host: name, RxeVersion: strings.TrimSpace(string(v))}
}

// Liveness of the agents' connections: a connection that hears nothing
// for pingAfter is pinged, and closed if the ping is not answered within
// pingTimeout, or if nothing can be written to it for writeTimeout. A
// migration thus learns of a dead agent or a cut link in seconds, while
// a restore that answers only when done may take minutes.
const (
	dialTimeout  = 10 * time.Second
	pingAfter    = 5 * time.Second
	pingTimeout  = 10 * time.Second
	writeTimeout = 20 * time.Second
)

// http2Config is the HTTP/2 configuration of both ends.
func http2Config() *http.HTTP2Config {
	return &http.HTTP2Config{SendPingTimeout: pingAfter, PingTimeout: pingTimeout, WriteByteTimeout: writeTimeout}
}

// Server is an agent's service.
type Server struct {
	ID   *Identity
	Info func() Info
	// Routes are more of the agent's API, by pattern ("POST /v1/...").
	Routes map[string]http.HandlerFunc
}

// Handler serves the agent's API (over the TLS listener of Serve).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, s.Info())
	})
	for p, h := range s.Routes {
		mux.HandleFunc(p, h)
	}
	return mux
}

// WriteJSON answers with v as JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers with err, as JSON {"error": ...} plus the fields of
// an error in its chain with ErrorFields, and a status code for its
// errdefs class.
func WriteError(w http.ResponseWriter, err error) {
	body := map[string]string{}
	var f interface{ ErrorFields() map[string]string }
	if errors.As(err, &f) {
		body = f.ErrorFields()
	}
	body["error"] = err.Error()
	code := http.StatusInternalServerError
	switch {
	case errdefs.IsInvalidArgument(err):
		code = http.StatusBadRequest
	case errdefs.IsNotFound(err):
		code = http.StatusNotFound
	case errdefs.IsAlreadyExists(err), errdefs.IsConflict(err):
		code = http.StatusConflict
	case errdefs.IsFailedPrecondition(err):
		code = http.StatusPreconditionFailed
	}
	WriteJSON(w, code, body)
}

// StatusError is an agent's answer other than 200 OK.
type StatusError struct {
	Addr   string
	Status string
	// Fields are the answer's JSON fields; "error" is the message.
	Fields map[string]string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("agent at %s: %s: %s", e.Addr, e.Status, e.Fields["error"])
}

// Serve serves on l, with TLS, until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.ID.ServerTLS(),
		ReadHeaderTimeout: 30 * time.Second,
		HTTP2:             http2Config(),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.G(ctx).Infof("agent: serving on %s", l.Addr())
	err := srv.ServeTLS(l, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Client talks to another host's agent.
type Client struct {
	base string
	http *http.Client
}

// NewClient is a client of the agent at addr (HOST or HOST:PORT) with
// this host's identity.
func NewClient(id *Identity, addr string) *Client {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, DefaultPort)
	}
	return &Client{
		base: "https://" + addr,
		http: &http.Client{Transport: &http.Transport{
			TLSClientConfig:     id.ClientTLS(),
			ForceAttemptHTTP2:   true,
			HTTP2:               http2Config(),
			DialContext:         (&net.Dialer{Timeout: dialTimeout}).DialContext,
			TLSHandshakeTimeout: dialTimeout,
		}},
	}
}

// Info asks the agent about its host.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var info Info
	return info, c.Do(ctx, http.MethodGet, "/v1/info", nil, nil, &info)
}

// Do sends a request to the agent, with body (nil for none) and headers,
// and decodes its JSON answer into out. An answer other than 200 OK is an
// error with the agent's message.
func (c *Client) Do(ctx context.Context, method, path string, body io.Reader, header http.Header, out any) error {
	return c.Send(ctx, method, path, body, header, nil, out)
}

// Send is Do with trailers: the body fills trailer's values by the time
// it ends (its keys must be set before).
func (c *Client) Send(ctx context.Context, method, path string, body io.Reader, header, trailer http.Header, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Trailer = trailer
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// do sends req; an answer other than 200 OK is a *StatusError.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	addr := strings.TrimPrefix(c.base, "https://")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent at %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		e := &StatusError{Addr: addr, Status: resp.Status}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e.Fields) != nil || e.Fields["error"] == "" {
			e.Fields = map[string]string{"error": strings.TrimSpace(string(b))}
		}
		return nil, e
	}
	return resp, nil
}

// Duplex is a two-way byte stream with an agent's handler (Client.Open),
// one HTTP/2 stream: what is written is the request's body, what is
// read the answer's, both under way at once.
type Duplex struct {
	w    *io.PipeWriter
	resp *http.Response
}

// Open opens a Duplex with the agent's handler of path, which must
// answer 200 OK (and flush it) before it reads the body.
func (c *Client) Open(ctx context.Context, path string, header http.Header) (*Duplex, error) {
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, pr)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.do(req)
	if err != nil {
		pw.CloseWithError(err)
		return nil, err
	}
	return &Duplex{w: pw, resp: resp}, nil
}

func (d *Duplex) Read(p []byte) (int, error)  { return d.resp.Body.Read(p) }
func (d *Duplex) Write(p []byte) (int, error) { return d.w.Write(p) }

// CloseWrite ends what is sent: the handler reads the end of the body.
func (d *Duplex) CloseWrite() error { return d.w.Close() }

// Close ends the stream both ways.
func (d *Duplex) Close() error {
	d.w.CloseWithError(errDuplexClosed)
	return d.resp.Body.Close()
}

var errDuplexClosed = errors.New("stream closed")

// DuplexAnswer answers a Duplex's request 200 OK, and is where its
// handler writes: each write reaches the client as it is made, while the
// handler still reads the request's body.
func DuplexAnswer(w http.ResponseWriter) (io.Writer, error) {
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, err
	}
	return flushWriter{w, rc}, nil
}

type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}
