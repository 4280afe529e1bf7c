package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
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
	ps := pop3.NewServer(b, log.Named("pop3"))
	ps.AllowInsecureAuth = cfg.Auth.AllowInsecureAuth
	ps.ReadTimeout = cfg.Server.IdleTimeout
	ps.AuthTimeout = cfg.Server.AuthTimeout
	if cfg.TLS.CertFile != "" {
		tc, err := loadTLS(cfg.TLS)
		if err != nil {
			return nil, err
		}
		ps.TLSConfig = tc
	}
	return &Server{cfg: cfg, log: log, Bridge: b, POP3: ps}, nil
}

func loadTLS(c TLSConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("config: tls: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// Listen opens the configured listeners: server.listen and, when set,
// server.listen_tls (implicit TLS).
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("server.listen: %w", err)
	}
	s.listeners = append(s.listeners, ln)
	if s.cfg.Server.ListenTLS != "" {
		tln, err := net.Listen("tcp", s.cfg.Server.ListenTLS)
		if err != nil {
			ln.Close()
			return fmt.Errorf("server.listen_tls: %w", err)
		}
		s.listeners = append(s.listeners, tls.NewListener(tln, s.POP3.TLSConfig))
	}
	return nil
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
