package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Defaults set by NewServer, and used for a zero field.
const (
	// DefaultAuthTimeout bounds the time a client has to log in.
	DefaultAuthTimeout = 60 * time.Second
	// DefaultReadTimeout is the autologout timer of the TRANSACTION state:
	// RFC 1939 §3 requires it to be at least 10 minutes.
	DefaultReadTimeout = 10 * time.Minute
	// DefaultWriteTimeout bounds each write to the client.
	DefaultWriteTimeout = 60 * time.Second
	// DefaultCommitTimeout bounds Maildrop.Commit at QUIT.
	DefaultCommitTimeout = 2 * time.Minute
	// DefaultMaxLineLength is the longest command line accepted, CRLF
	// included. RFC 2449 §4 limits commands to 255 octets; the slack serves
	// clients that send long user names.
	DefaultMaxLineLength = 512
	// DefaultMaxErrors is the number of protocol errors and failed logins
	// after which a connection is closed.
	DefaultMaxErrors = 10
	// DefaultLoginFailDelay is the pause before a failed login is answered.
	DefaultLoginFailDelay = time.Second
	// DefaultImplementation is the text of the CAPA IMPLEMENTATION line.
	DefaultImplementation = "popbridge"
)

// maxSASLLineLength is the longest SASL response line accepted (RFC 5034 §4
// sets no limit; OAuth tokens run to several KiB), CRLF included.
const maxSASLLineLength = 16 << 10

// ErrServerClosed is returned by Serve after a call to Close or Shutdown.
var ErrServerClosed = errors.New("pop3: server closed")

// Server is a POP3 server (RFC 1939). Configure it through its fields
// before the first call to Serve or ServeConn, and do not change them after.
type Server struct {
	// Backend authenticates users and opens their maildrops. Required.
	Backend Backend
	// Logger receives one line per session and the errors the clients do
	// not see. Nil means no logging.
	Logger *zap.Logger

	// TLSConfig, when set, enables STLS (RFC 2595) in the AUTHORIZATION
	// state. For implicit TLS (POP3S, RFC 8314), wrap the listener with
	// tls.NewListener instead.
	TLSConfig *tls.Config
	// AllowInsecureAuth allows USER/PASS and AUTH on a cleartext
	// connection. Leave it false except on loopback and in sidecars.
	AllowInsecureAuth bool
	// Implementation is sent in the CAPA IMPLEMENTATION line (RFC 2449
	// §6.9); empty omits the line.
	Implementation string

	// AuthTimeout bounds the whole AUTHORIZATION state: from the
	// connection (TLS handshake included) to the login, however many
	// commands the client sends meanwhile. Zero means DefaultAuthTimeout.
	AuthTimeout time.Duration
	// ReadTimeout is the autologout timer after login (RFC 1939 §3: at
	// least 10 minutes). Zero means DefaultReadTimeout.
	ReadTimeout time.Duration
	// WriteTimeout bounds each write to the client. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// CommitTimeout bounds Maildrop.Commit at QUIT. Commit's context is not
	// cancelled by Close, Shutdown or a dropped connection, only by this
	// timeout. Zero means DefaultCommitTimeout.
	CommitTimeout time.Duration
	// MaxLineLength is the longest command line, CRLF included. SASL
	// responses may be up to 16 KiB. Zero means DefaultMaxLineLength.
	MaxLineLength int
	// MaxErrors is the number of protocol errors and failed logins after
	// which the server answers "-ERR too many errors" and closes the
	// connection. Zero means DefaultMaxErrors.
	MaxErrors int
	// LoginFailDelay is the pause before a failed login is answered. Zero
	// means no pause; NewServer sets DefaultLoginFailDelay. It is not used
	// when LoginLimiter is set: the limiter decides the pause.
	LoginFailDelay time.Duration

	// ConnLimiter, when set, admits or refuses each new connection before
	// the greeting (limits on connections in total and per address).
	ConnLimiter ConnLimiter
	// LoginLimiter, when set, is asked before each login attempt and told
	// its outcome: it may refuse the attempt, and it sets the pause after
	// a failure (growing delays, limits on failures per address and per
	// account).
	LoginLimiter LoginLimiter
	// Observer, when set, is told about sessions, commands and logins
	// (for metrics).
	Observer Observer

	mu        sync.Mutex
	closed    bool // no new connections: set by Close and Shutdown
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // one per connection handler
	draining  atomic.Bool    // Shutdown is in progress
}

// NewServer returns a Server for be with the default limits, no TLS and
// cleartext authentication refused. A nil log means no logging.
func NewServer(be Backend, log *zap.Logger) *Server {
	return &Server{
		Backend:        be,
		Logger:         log,
		Implementation: DefaultImplementation,
		AuthTimeout:    DefaultAuthTimeout,
		ReadTimeout:    DefaultReadTimeout,
		WriteTimeout:   DefaultWriteTimeout,
		CommitTimeout:  DefaultCommitTimeout,
		MaxLineLength:  DefaultMaxLineLength,
		MaxErrors:      DefaultMaxErrors,
		LoginFailDelay: DefaultLoginFailDelay,
	}
}

// Serve accepts connections on ln and serves each in its own goroutine. It
// backs off on temporary accept errors, closes ln when it returns, and
// returns ErrServerClosed after Close or Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if s.Backend == nil {
		return errors.New("pop3: Server.Backend is nil")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if ln != nil {
			ln.Close()
		}
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logger().Warn("accept failed, retrying", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := s.track(nc)
		if c == nil {
			return ErrServerClosed
		}
		go c.serve()
	}
}

// ServeConn serves one accepted connection and returns when its session
// ends. A *tls.Conn is served as implicit TLS. After Close or Shutdown, or
// without a Backend, it closes nc at once.
func (s *Server) ServeConn(nc net.Conn) {
	if s.Backend == nil {
		s.logger().Error("pop3: Server.Backend is nil")
		nc.Close()
		return
	}
	if c := s.track(nc); c != nil {
		c.serve()
	}
}

// Shutdown stops accepting connections and closes the sessions waiting for
// a command in the AUTHORIZATION state. It lets the other sessions run
// until they end or ctx is done; then it closes their connections. Either
// way it returns only when every connection handler has returned, which
// lets a Maildrop.Commit in progress finish (see CommitTimeout). It returns
// ctx.Err() if ctx ended first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	conns := s.stop()
	for _, c := range conns {
		c.interruptIdle()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.killConns()
		<-done
		return ctx.Err()
	}
}

// Close stops accepting connections and closes every connection at once,
// without waiting for their handlers (a Commit in progress still runs to
// its end). Use Shutdown to wait for them.
func (s *Server) Close() error {
	s.draining.Store(true)
	s.stop()
	s.killConns()
	return nil
}

// stop marks the server closed, closes its listeners and returns the open
// connections.
func (s *Server) stop() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

func (s *Server) killConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.kill()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers a new connection, or closes nc and returns nil when the
// server is closed. The WaitGroup is only added to under s.mu while the
// server is open, so it never races with Shutdown's Wait.
func (s *Server) track(nc net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return nil
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) logger() *zap.Logger {
	if s.Logger == nil {
		return zap.NewNop()
	}
	return s.Logger
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
