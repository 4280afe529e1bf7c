package bridge

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/faultproxy"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
)

// flakyStore is a store whose Ping can be made to fail, as a PostgreSQL
// server that went away.
type flakyStore struct {
	state.Store
	down atomic.Bool
}

func (f *flakyStore) Ping(ctx context.Context) error {
	if f.down.Load() {
		return errors.New("store unreachable")
	}
	return f.Store.(state.Pinger).Ping(ctx)
}

// TestAdminEndpoints: with [admin] listen, /healthz answers, /metrics
// serves the Go runtime's metrics, and /readyz is unready while the store
// or the upstream is away and ready again when they are back.
func TestAdminEndpoints(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	proxy := faultproxy.New(t, mem.Addr)
	e := startBridge(t, nil, withStoreWrap(func(st state.Store) state.Store { return &flakyStore{Store: st} }),
		withConfig(func(cfg *Config) {
			cfg.Upstream.Address = proxy.Addr
			cfg.Upstream.Timeout = time.Second
			cfg.Admin.Listen = "127.0.0.1:0"
			cfg.Admin.ReadyCache = 100 * time.Millisecond
		}))
	srv, st := e.srv, e.st.(*flakyStore)
	base := "http://" + srv.AdminAddr().String()
	fetch := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// /readyz caches its answer for a few seconds: wait for a fresh one.
	waitReady := func(wantCode int, wantText string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			code, body := fetch("/readyz")
			if code == wantCode && strings.Contains(body, wantText) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz = %d %q, want %d with %q", code, body, wantCode, wantText)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if code, body := fetch("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := fetch("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Errorf("/metrics = %d:\n%.300s", code, body)
	}
	waitReady(200, "ready")

	st.down.Store(true)
	waitReady(503, "store: store unreachable")
	st.down.Store(false)
	waitReady(200, "ready")

	proxy.Refuse(true)
	waitReady(503, "upstream:")
	proxy.Refuse(false)
	waitReady(200, "ready")
	if n := len(mem.CommandsNamed("LOGIN", "AUTHENTICATE")); n != 0 {
		t.Errorf("readiness probes logged in upstream %d times", n)
	}
}
