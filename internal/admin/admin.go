// Package admin serves popbridge's operator HTTP endpoints on their own
// listener: /healthz (the process answers), /readyz (it can serve mail
// now), /metrics (Prometheus) and, when asked for, /debug/pprof. It knows
// nothing of mail: the checks and the metrics registry are handed in.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults of Options.
const (
	DefaultCheckTimeout = 3 * time.Second
	DefaultCacheFor     = 5 * time.Second
)

// Check is one condition of readiness, such as "the state store answers".
// Fn must return within its context; its error text is shown on /readyz,
// so it must hold no secret.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Options configure a Server. A nil Registry serves no /metrics.
type Options struct {
	Registry *prometheus.Registry
	Checks   []Check
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// CheckTimeout bounds one round of checks; CacheFor is how long its
	// result answers /readyz, so that probes cannot hammer the upstream.
	CheckTimeout time.Duration
	CacheFor     time.Duration
}

// Server is the admin HTTP server.
type Server struct {
	opts Options
	mux  *http.ServeMux
	srv  *http.Server
	now  func() time.Time

	mu      sync.Mutex
	checked time.Time
	failed  map[string]string // check name → error text, from the last round
	running chan struct{}     // closed when the round in progress ends; nil when none
}

// New returns the admin server of opts.
func New(opts Options) *Server {
	if opts.CheckTimeout <= 0 {
		opts.CheckTimeout = DefaultCheckTimeout
	}
	if opts.CacheFor <= 0 {
		opts.CacheFor = DefaultCacheFor
	}
	s := &Server{opts: opts, mux: http.NewServeMux(), now: time.Now}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if opts.Registry != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{Registry: opts.Registry}))
	}
	if opts.Pprof {
		s.mux.HandleFunc("/debug/pprof/", pprof.Index)
		s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return s
}

// Handler returns the server's handler (for tests and for embedding).
func (s *Server) Handler() http.Handler { return s.mux }

// Serve answers on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	srv := s.srv
	s.mu.Unlock()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server, letting requests in progress finish until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// Ready runs the checks, or returns the result of a round that ended less
// than CacheFor ago. Concurrent callers share one round. The map names the
// checks that failed and why; it is empty when ready.
func (s *Server) Ready(ctx context.Context) map[string]string {
	s.mu.Lock()
	if !s.checked.IsZero() && s.now().Sub(s.checked) < s.opts.CacheFor {
		failed := s.failed
		s.mu.Unlock()
		return failed
	}
	if s.running != nil {
		wait := s.running
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return map[string]string{"readyz": ctx.Err().Error()}
		}
		s.mu.Lock()
		failed := s.failed
		s.mu.Unlock()
		return failed
	}
	done := make(chan struct{})
	s.running = done
	s.mu.Unlock()

	failed := s.runChecks()

	s.mu.Lock()
	s.failed, s.checked, s.running = failed, s.now(), nil
	s.mu.Unlock()
	close(done)
	return failed
}

func (s *Server) runChecks() map[string]string {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.CheckTimeout)
	defer cancel()
	var mu sync.Mutex
	failed := map[string]string{}
	var wg sync.WaitGroup
	for _, c := range s.opts.Checks {
		wg.Go(func() {
			if err := c.Fn(ctx); err != nil {
				mu.Lock()
				failed[c.Name] = err.Error()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	failed := s.Ready(r.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if len(failed) == 0 {
		fmt.Fprintln(w, "ready")
		return
	}
	names := make([]string, 0, len(failed))
	for n := range failed {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s: %s\n", n, failed[n])
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprint(w, "not ready\n"+b.String())
}
