package frontend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/moby/buildkit/client/llb"
	gwclient "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/opencontainers/go-digest"

	"github.com/stargazer-build/stargazer/tracer"
	"github.com/stargazer-build/stargazer/tracer/buildtrace"
	"github.com/stargazer-build/stargazer/worker"
)

// SelfServer hands a daemon's own executable to its builds as the tracer,
// for the frontend serving as the daemon's built-in dockerfile.v0, where
// there is no frontend image to take it from. BuildKit fetches it through
// an HTTP source pinned to its digest, from a listener on the loopback
// address under an unguessable path; the fetch is cached like any source.
type SelfServer struct {
	url    string
	dgst   digest.Digest
	name   string
	server *http.Server
}

// NewSelfServer serves the running executable, which must be able to act
// as the tracer (tracer.Subcommand).
func NewSelfServer() (*SelfServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate own executable: %w", err)
	}
	f, err := os.Open(exe)
	if err != nil {
		return nil, err
	}
	d := digest.Canonical.Digester()
	_, err = io.Copy(d.Hash(), f)
	f.Close()
	if err != nil {
		return nil, err
	}
	var token [16]byte
	if _, err := rand.Read(token[:]); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("serve the tracer: %w", err)
	}
	path := "/" + hex.EncodeToString(token[:]) + "/tracer"
	mux := http.NewServeMux()
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, exe)
	})
	s := &SelfServer{
		url:    "http://" + l.Addr().String() + path,
		dgst:   d.Digest(),
		name:   filepath.Base(exe),
		server: &http.Server{Handler: mux},
	}
	go s.server.Serve(l)
	return s, nil
}

// Source is the TracerSource of the served executable.
func (s *SelfServer) Source(context.Context, gwclient.Client) (buildtrace.Tracer, error) {
	st := llb.HTTP(s.url, llb.Checksum(s.dgst), llb.Filename(s.name), llb.Chmod(0o755),
		llb.WithCustomName("[stargazer] tracer"))
	return buildtrace.Tracer{State: st, Path: s.name, Args: []string{tracer.Subcommand}}, nil
}

// Close stops serving.
func (s *SelfServer) Close() error { return s.server.Close() }

// DaemonOption returns the worker option that serves this frontend as a
// daemon's built-in dockerfile.v0, tracing with the daemon's own
// executable, and the function that stops serving that executable.
func DaemonOption() (worker.Option, func() error, error) {
	s, err := NewSelfServer()
	if err != nil {
		return nil, nil, err
	}
	f, err := New(WithTracerSource(s.Source))
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return worker.WithDockerfileFrontend(f), s.Close, nil
}
