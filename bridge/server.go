package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/popbridge/popbridge/internal/admin"
	"github.com/popbridge/popbridge/internal/limits"
	"github.com/popbridge/popbridge/internal/proxylisten"
	"github.com/popbridge/popbridge/internal/tlsreload"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
)

// Server is a running popbridge: the POP3 listeners, the protocol server and
// the bridge behind it.
type Server struct {
	cfg Config // what runs now (Reload changes it)
	log *zap.Logger
	// Bridge is the backend the server started with; after a Reload, new
	// logins go to another one.
	Bridge  *Bridge
	backend *switchBackend
	// LogLevel, when set, is the level of log that Reload sets to
	// log.level.
	LogLevel *zap.AtomicLevel
	reloadMu sync.Mutex
	POP3     *pop3.Server
	// Limits is the abuse control the POP3 server consults (the
	// [limits] table).
	Limits *limits.Limits

	cert    *tlsreload.Certificate // nil without [tls]
	trusted []netip.Prefix         // server.proxy_trusted
	store   state.Store

	// Metrics is the server's Prometheus registry, served on the admin
	// listener's /metrics.
	Metrics *prometheus.Registry
	metrics *metrics
	admin   *admin.Server // nil without [admin] listen
	adminLn net.Listener
	serving atomic.Bool // the POP3 listeners are being served

	mu        sync.Mutex
	listeners []net.Listener
	wg        sync.WaitGroup
}

// NewServer wires a POP3 server to a Bridge over st. It opens no socket
// yet: call Listen, then Serve.
func NewServer(cfg Config, st state.Store, log *zap.Logger) (*Server, error) {
	return NewServerWith(cfg, st, log, AccountOptions{})
}

// NewServerWith is NewServer with options for enrolled accounts.
func NewServerWith(cfg Config, st state.Store, log *zap.Logger, opts AccountOptions) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	b, err := NewBridgeWith(cfg, st, log, opts)
	if err != nil {
		return nil, err
	}
	m, reg := newMetrics()
	b.metrics, b.records.m, b.drops.metrics = m, m, m
	b.warm.setMetrics(m)
	// The limits count by the same account key as the records and the
	// locks.
	lim := limiter{l: limits.New(cfg.Limits, b.AccountKey), m: m}
	b.sessions = lim
	if cfg.Auth.AllowInsecureAuth && !loopbackAddr(cfg.Server.Listen) {
		log.Warn("auth.allow_insecure_auth_remote = true: POP3 clients may send passwords in clear to a listener that is not loopback; anyone on that network can read them",
			zap.String("listen", cfg.Server.Listen))
	}
	trusted := cfg.Server.ProxyTrusted
	sw := &switchBackend{}
	sw.cur.Store(b)
	ps := pop3.NewServer(sw, log.Named("pop3"))
	ps.AllowInsecureAuth = cfg.Auth.AllowInsecureAuth
	ps.ReadTimeout = cfg.Server.IdleTimeout
	ps.AuthTimeout = cfg.Server.AuthTimeout
	ps.ConnLimiter = lim
	ps.LoginLimiter = lim
	ps.LoginFailDelay = cfg.Limits.LoginFailureDelay // used only without a LoginLimiter
	ps.Observer = m
	b.up.Observe = m.observeUpstream
	b.onRefresh = m.oauthRefresh
	s := &Server{cfg: cfg, log: log, Bridge: b, backend: sw, POP3: ps, Limits: lim.l, trusted: trusted, store: st, Metrics: reg, metrics: m}
	if cfg.Admin.Listen != "" {
		s.admin = admin.New(admin.Options{Registry: s.Metrics, Checks: s.readiness(), Pprof: cfg.Admin.Pprof, CacheFor: cfg.Admin.ReadyCache})
	}
	if cfg.TLS.CertFile != "" {
		if s.cert, err = tlsreload.Load(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			return nil, fmt.Errorf("config: tls: %w", err)
		}
		ps.TLSConfig = s.cert.ServerConfig()
	}
	return s, nil
}

// Listen opens the configured listeners: server.listen and, when set,
// server.listen_tls (implicit TLS), both behind the PROXY protocol when
// server.proxy_trusted is set.
func (s *Server) Listen() error {
	ln, err := s.listen(s.cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("server.listen: %w", err)
	}
	s.listeners = append(s.listeners, ln)
	if s.cfg.Server.ListenTLS != "" {
		tln, err := s.listen(s.cfg.Server.ListenTLS)
		if err != nil {
			ln.Close()
			return fmt.Errorf("server.listen_tls: %w", err)
		}
		s.listeners = append(s.listeners, tls.NewListener(tln, s.POP3.TLSConfig))
	}
	if s.admin != nil {
		aln, err := net.Listen("tcp", s.cfg.Admin.Listen)
		if err != nil {
			for _, l := range s.listeners {
				l.Close()
			}
			return fmt.Errorf("admin.listen: %w", err)
		}
		s.adminLn = aln
	}
	return nil
}

// AdminAddr returns the address of the admin listener, or nil without
// [admin] listen.
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

// listen opens a TCP listener on addr, with the PROXY protocol in front
// when server.proxy_trusted is set.
func (s *Server) listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil || len(s.trusted) == 0 {
		return ln, err
	}
	return proxylisten.New(ln, s.trusted, s.log.Named("proxy")), nil
}

// Addr returns the address of the POP3 listener (after Listen).
func (s *Server) Addr() net.Addr { return s.listeners[0].Addr() }

// TLSAddr returns the address of the implicit-TLS listener, or nil.
func (s *Server) TLSAddr() net.Addr {
	if len(s.listeners) < 2 {
		return nil
	}
	return s.listeners[1].Addr()
}

// Serve serves every listener until Shutdown or Close and returns the first
// error that is not the normal end.
func (s *Server) Serve() error {
	errc := make(chan error, len(s.listeners)+1)
	if s.adminLn != nil {
		go func() {
			if err := s.admin.Serve(s.adminLn); err != nil {
				s.log.Error("admin listener failed", zap.Error(err))
			}
		}()
	}
	s.serving.Store(true)
	for _, ln := range s.listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			errc <- s.POP3.Serve(ln)
		}()
	}
	s.wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil && !errors.Is(err, pop3.ErrServerClosed) {
			return err
		}
	}
	return nil
}

// Shutdown stops accepting, lets sessions finish until ctx ends, then
// closes the rest. A session in the middle of its UPDATE finishes it.
func (s *Server) Shutdown(ctx context.Context) error {
	s.serving.Store(false)
	// The background completions first: they hold upstream connections
	// and write to the store, which closes after Shutdown.
	s.Bridge.records.bg.stop(ctx)
	err := s.POP3.Shutdown(ctx)
	s.backend.current().warm.closeAll() // LOGOUT of every warm connection
	if s.admin != nil {
		s.admin.Shutdown(ctx)
	}
	return err
}
