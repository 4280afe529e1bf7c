package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestHealthAndReadiness(t *testing.T) {
	var calls atomic.Int32
	var storeErr atomic.Value
	storeErr.Store("")
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	s := New(Options{Checks: []Check{
		{Name: "store", Fn: func(ctx context.Context) error {
			calls.Add(1)
			if e := storeErr.Load().(string); e != "" {
				return errors.New(e)
			}
			return nil
		}},
		{Name: "listeners", Fn: func(ctx context.Context) error { return nil }},
	}})
	s.now = func() time.Time { return now }

	if code, body := get(t, s.Handler(), "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, s.Handler(), "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	// Within CacheFor the checks do not run again, however many probes.
	storeErr.Store("connection refused")
	for range 5 {
		if code, _ := get(t, s.Handler(), "/readyz"); code != 200 {
			t.Errorf("/readyz within the cache time = %d, want the cached 200", code)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("store check ran %d times, want 1", n)
	}
	now = now.Add(DefaultCacheFor)
	code, body := get(t, s.Handler(), "/readyz")
	if code != 503 || body != "not ready\nstore: connection refused\n" {
		t.Errorf("/readyz with the store down = %d %q", code, body)
	}
	storeErr.Store("")
	now = now.Add(DefaultCacheFor)
	if code, _ := get(t, s.Handler(), "/readyz"); code != 200 {
		t.Errorf("/readyz after the store came back = %d", code)
	}
	if code, _ := get(t, s.Handler(), "/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without Pprof = %d, want 404", code)
	}
	if code, _ := get(t, s.Handler(), "/metrics"); code != 404 {
		t.Errorf("/metrics without a registry = %d, want 404", code)
	}
}

// TestReadyConcurrentProbes: probes that arrive together share one round
// of checks.
func TestReadyConcurrentProbes(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	s := New(Options{Checks: []Check{{Name: "upstream", Fn: func(ctx context.Context) error {
		calls.Add(1)
		<-release
		return nil
	}}}})
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if failed := s.Ready(t.Context()); len(failed) != 0 {
				t.Errorf("Ready = %v", failed)
			}
		})
	}
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("check ran %d times for 10 concurrent probes, want 1", n)
	}
}

// TestCheckTimeout: a check that hangs makes the server unready after
// CheckTimeout instead of hanging the probe.
func TestCheckTimeout(t *testing.T) {
	s := New(Options{CheckTimeout: 50 * time.Millisecond, Checks: []Check{{Name: "upstream", Fn: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}}}})
	failed := s.Ready(t.Context())
	if !strings.Contains(failed["upstream"], "deadline") {
		t.Errorf("Ready = %v, want the upstream check's deadline", failed)
	}
}

func TestMetricsAndPprof(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "popbridge_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Add(3)
	s := New(Options{Registry: reg, Pprof: true})
	code, body := get(t, s.Handler(), "/metrics")
	if code != 200 || !strings.Contains(body, "popbridge_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d:\n%.500s", code, body)
	}
	if code, _ := get(t, s.Handler(), "/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ with Pprof = %d", code)
	}
}
