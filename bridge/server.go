package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge/pop3"
	"github.com/popbridge/popbridge/state"
)

// Server is a running popbridge: the POP3 listeners, the protocol server and
// the bridge behind it.
type Server struct {
	cfg    Config
	log    *zap.Logger
	Bridge *Bridge
	POP3   *pop3.Server
	// Limits is the abuse control the POP3 server consults (the
	// [limits] table).
	Limits *Limits

	cert    *certificate   // nil without [tls]
	trusted []netip.Prefix // server.proxy_trusted

	mu        sync.Mutex
	listeners []net.Listener
	wg        sync.WaitGroup
}

// NewServer wires a POP3 server to a Bridge over st. It opens no socket
// yet: call Listen, then Serve.
func NewServer(cfg Config, st state.Store, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	b, err := NewBridge(cfg, st, log)
	if err != nil {
		return nil, err
	}
	limits, err := NewLimits(cfg.Limits, func(login string) string {
		account, _ := b.splitLogin(login)
		return accountKey(account)
	})
	if err != nil {
		return nil, err
	}
	trusted, err := parseNetworks(cfg.Server.ProxyTrusted)
	if err != nil {
		return nil, fmt.Errorf("config: server.proxy_trusted: %w", err)
	}
	ps := pop3.NewServer(b, log.Named("pop3"))
	ps.AllowInsecureAuth = cfg.Auth.AllowInsecureAuth
	ps.ReadTimeout = cfg.Server.IdleTimeout
	ps.AuthTimeout = cfg.Server.AuthTimeout
	ps.ConnLimiter = limits
	ps.LoginLimiter = limits
	ps.LoginFailDelay = cfg.Limits.LoginFailureDelay // used only without a LoginLimiter
	s := &Server{cfg: cfg, log: log, Bridge: b, POP3: ps, Limits: limits, trusted: trusted}
	if cfg.TLS.CertFile != "" {
		if s.cert, err = loadCertificate(cfg.TLS); err != nil {
			return nil, err
		}
		ps.TLSConfig = s.cert.serverTLS()
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
	return nil
}

// listen opens a TCP listener on addr, with the PROXY protocol in front
// when server.proxy_trusted is set.
func (s *Server) listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil || len(s.trusted) == 0 {
		return ln, err
	}
	return newProxyListener(ln, s.trusted, s.log.Named("proxy")), nil
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
	errc := make(chan error, len(s.listeners))
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
	return s.POP3.Shutdown(ctx)
}
