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

	"github.com/containerd/log"
)

// DefaultPort is the agents' TCP port.
const DefaultPort = "7430"

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

// Server is an agent's service.
type Server struct {
	ID   *Identity
	Info func() Info
}

// Handler serves the agent's API (over the TLS listener of Serve).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Info())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Serve serves on l, with TLS, until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.ID.ServerTLS(),
		ReadHeaderTimeout: 30 * time.Second,
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
		http: &http.Client{Transport: &http.Transport{TLSClientConfig: id.ClientTLS(), ForceAttemptHTTP2: true}},
	}
}

// Info asks the agent about its host.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var info Info
	return info, c.get(ctx, "/v1/info", &info)
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", strings.TrimPrefix(c.base, "https://"), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent at %s: %s: %s", strings.TrimPrefix(c.base, "https://"), resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
