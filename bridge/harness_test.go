package bridge

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/internal/faultproxy"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore"
	"github.com/popbridge/popbridge/upstream"
)

// This file is the one way the tests start popbridge in-process:
// startBridge (or prepareBridge, then env.start) with options for the
// configuration, the store, the upstream in front of which it runs, the
// logger and the clock. The short helpers other files use (newEnv,
// startSec, startBenchServer, ...) are a few lines over it.

// upstreamEnv is an IMAP account the end-to-end tests run against: the
// in-process memory server always, and a real Dovecot when .ci/run (or a
// developer) started one and exported POPBRIDGE_TEST_DOVECOT_ADDR.
type upstreamEnv struct {
	name       string
	addr       string
	user, pass string
	box        imaptest.Mailboxes
	mem        *imaptest.MemServer // nil for Dovecot
}

// forEachUpstream runs fn against every available upstream, each with a
// fresh account holding an empty INBOX and a \Trash mailbox named Trash.
func forEachUpstream(t *testing.T, fn func(t *testing.T, up *upstreamEnv)) {
	t.Run("memserver", func(t *testing.T) {
		fn(t, memUpstream(t))
	})
	t.Run("dovecot", func(t *testing.T) {
		addr := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR")
		domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
		if addr == "" || domain == "" {
			t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
		}
		user := freshUser(domain)
		fn(t, &upstreamEnv{name: "dovecot", addr: addr, user: user, pass: "pass", box: imaptest.NewAdmin(t, addr, user, "pass")})
	})
}

// memUpstream is a fresh memory server with a \Trash mailbox named Trash.
func memUpstream(t testing.TB) *upstreamEnv {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	return &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
}

// freshUser returns a Dovecot test account of its own: any user of the
// dynamic domain logs in with "pass" and starts with an empty mailbox.
func freshUser(domain string) string {
	var b [6]byte
	rand.Read(b[:])
	return "t-" + hex.EncodeToString(b[:]) + "@" + domain
}

// env is popbridge serving one upstream, on a state file that outlives
// restarts.
type env struct {
	t         *testing.T // nil in a benchmark
	tb        testing.TB
	up        *upstreamEnv
	cfg       Config
	statePath string
	st        state.Store
	srv       *Server
	addr      string
	tlsAddr   string // server.listen_tls, when set
	done      chan error
	logger    *zap.Logger // nil: the test's own
	// With observe set before start, logs receives popbridge's log from
	// then on (a restart starts it anew).
	observe bool
	logs    *observer.ObservedLogs
	// With jsonLog set before start, raw receives every line at Debug as
	// JSON.
	jsonLog bool
	raw     *logBuffer
	// level is the test logger's level (Debug when zero).
	level zapcore.Level
	// now, when set before start, is the bridge's clock.
	now func() time.Time
	// openStore opens the store at each start (the bolt file at statePath
	// by default); keepStore leaves it open at stop (a store the test
	// shares between servers).
	openStore func() (state.Store, error)
	keepStore bool
	wrapStore func(state.Store) state.Store
	// tune runs on the server before it accepts anything (setting fields
	// of a running server would be a data race).
	tune []func(*Server)
}

// envOpt is an option of startBridge; options apply in order.
type envOpt func(*env)

// withConfig changes the configuration.
func withConfig(mutate ...func(*Config)) envOpt {
	return func(e *env) {
		for _, m := range mutate {
			m(&e.cfg)
		}
	}
}

// withBaseConfig replaces the configuration with cfg.
func withBaseConfig(cfg Config) envOpt { return func(e *env) { e.cfg = cfg } }

// withStore serves st, closed at stop unless the test shares it (keep).
func withStore(st state.Store, keep bool) envOpt {
	return func(e *env) {
		e.openStore = func() (state.Store, error) { return st, nil }
		e.keepStore = keep
	}
}

// withPostgres opens the PostgreSQL store at dsn at each start.
func withPostgres(dsn string) envOpt {
	return func(e *env) {
		e.openStore = func() (state.Store, error) { return pgstore.Open(e.tb.Context(), dsn, nil) }
	}
}

// withStoreWrap serves wrap(store) instead of the store (a fault
// injector, a spy); the wrapped store is what is closed.
func withStoreWrap(wrap func(state.Store) state.Store) envOpt {
	return func(e *env) { e.wrapStore = wrap }
}

// withFaultProxy puts a faultproxy in front of the configured upstream
// and stores it in *p.
func withFaultProxy(p **faultproxy.Proxy) envOpt {
	return func(e *env) {
		*p = faultproxy.New(e.tb, e.cfg.Upstream.Address)
		e.cfg.Upstream.Address = (*p).Addr
	}
}

// withLogger logs to l instead of the test log.
func withLogger(l *zap.Logger) envOpt { return func(e *env) { e.logger = l } }

// withLogLevel keeps the test log at level and above.
func withLogLevel(level zapcore.Level) envOpt { return func(e *env) { e.level = level } }

// withObserver keeps popbridge's log in e.logs.
func withObserver() envOpt { return func(e *env) { e.observe = true } }

// withJSONLog keeps every log line, JSON at Debug, in e.raw.
func withJSONLog() envOpt { return func(e *env) { e.jsonLog = true } }

// withClock runs the bridge on now.
func withClock(now func() time.Time) envOpt { return func(e *env) { e.now = now } }

// withTune runs f on the server before it accepts anything.
func withTune(f ...func(*Server)) envOpt { return func(e *env) { e.tune = append(e.tune, f...) } }

// withPOP3Tune runs f on the POP3 server before it accepts anything.
func withPOP3Tune(f func(*pop3.Server)) envOpt {
	return withTune(func(s *Server) { f(s.POP3) })
}

// prepareBridge is startBridge without the start. up may be nil when an
// option sets the upstream.
func prepareBridge(tb testing.TB, up *upstreamEnv, opts ...envOpt) *env {
	tb.Helper()
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Upstream.Security = upstream.SecurityNone
	cfg.Upstream.Timeout = 10 * time.Second
	cfg.Auth.AllowInsecureAuth = true
	cfg.Limits.LoginFailureDelay, cfg.Limits.LoginFailureDelayMax = 0, 0 // tests of wrong passwords need no pause
	// Each session logs in upstream, as the tests of commands and
	// logins expect; the tests of warm connections turn them on.
	cfg.Upstream.WarmTTL = 0
	if up != nil {
		cfg.Upstream.Address = up.addr
	}
	t, _ := tb.(*testing.T)
	e := &env{t: t, tb: tb, up: up, cfg: cfg, statePath: filepath.Join(tb.TempDir(), "state.db")}
	for _, o := range opts {
		o(e)
	}
	return e
}

// startBridge starts popbridge in front of up (see the options) and stops
// it when the test ends.
func startBridge(tb testing.TB, up *upstreamEnv, opts ...envOpt) *env {
	tb.Helper()
	e := prepareBridge(tb, up, opts...)
	e.start()
	tb.Cleanup(e.stop)
	return e
}

func (e *env) start() {
	e.tb.Helper()
	open := e.openStore
	if open == nil {
		open = func() (state.Store, error) { return boltstore.Open(e.statePath, nil) }
	}
	st, err := open()
	if err != nil {
		e.tb.Fatal(err)
	}
	if e.wrapStore != nil {
		st = e.wrapStore(st)
	}
	log := e.logger
	if log == nil {
		log = zaptest.NewLogger(e.tb, zaptest.Level(e.level))
	}
	if e.observe || e.jsonLog {
		cores := []zapcore.Core{log.Core()}
		if e.observe {
			var core zapcore.Core
			core, e.logs = observer.New(zapcore.DebugLevel)
			cores = append(cores, core)
		}
		if e.jsonLog {
			e.raw = &logBuffer{}
			enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
			cores = append(cores, zapcore.NewCore(enc, e.raw, zapcore.DebugLevel))
		}
		log = zap.New(zapcore.NewTee(cores...))
	}
	srv, err := NewServer(e.cfg, st, log)
	if err != nil {
		e.closeStore(st)
		e.tb.Fatal(err)
	}
	if e.now != nil {
		srv.Bridge.now = e.now
	}
	for _, f := range e.tune {
		f(srv)
	}
	if err := srv.Listen(); err != nil {
		e.closeStore(st)
		e.tb.Fatal(err)
	}
	e.st, e.srv, e.addr = st, srv, srv.Addr().String()
	if a := srv.TLSAddr(); a != nil {
		e.tlsAddr = a.String()
	}
	e.done = make(chan error, 1)
	go func() { e.done <- srv.Serve() }()
}

func (e *env) closeStore(st state.Store) {
	if !e.keepStore {
		st.Close()
	}
}

// stop shuts popbridge down; a session that keeps it from stopping
// within 20 seconds fails the test.
func (e *env) stop() {
	if e.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	select {
	case <-e.done:
	case <-time.After(20 * time.Second):
		e.tb.Errorf("popbridge did not stop within 20s of Shutdown: a session hangs")
	}
	e.closeStore(e.st)
	e.srv = nil
}

// restart stops popbridge and starts it again on the same state file.
func (e *env) restart() {
	e.tb.Helper()
	e.stop()
	e.start()
}

// session logs in as the account with the given device tag. After a
// dropped connection the server needs a moment to notice and release the
// maildrop lock, so [IN-USE] is retried for a few seconds.
func (e *env) session(device string) *popConn {
	e.tb.Helper()
	user := e.up.user
	if device != "" {
		user += "#" + device
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := dialPOP(e.tb, e.addr)
		c.ok("USER %s", user)
		r := c.cmd("PASS %s", e.up.pass)
		if strings.HasPrefix(r, "+OK") {
			return c
		}
		c.drop()
		if !strings.HasPrefix(r, "-ERR [IN-USE]") || time.Now().After(deadline) {
			e.tb.Fatalf("login as %s: %q", user, r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logBuffer is a zap sink safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) Sync() error { return nil }

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// --- the short names ---

func newEnv(t *testing.T, up *upstreamEnv, mutate ...func(*Config)) *env {
	t.Helper()
	return startBridge(t, up, withConfig(mutate...))
}
