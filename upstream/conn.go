// Package upstream is popbridge's IMAP side: it dials the upstream server
// (implicit TLS, STARTTLS or cleartext), authenticates, selects the mailbox,
// lists it, streams message bodies for RETR and TOP, and applies the DELE
// marks with UID commands. It is the only package that imports imapclient.
//
// Rules every method keeps:
//   - Only UID commands. Never a bare EXPUNGE, never CLOSE: UID EXPUNGE (which
//     needs UIDPLUS or IMAP4rev2) of our own UIDs, or UID MOVE.
//   - A missing capability is refused with a KindPerm error before anything is
//     sent; nothing silently widens.
//   - No command line exceeds 8 KB: UID sets are split (RFC 2683 §3.2.1.5).
//   - Listings stream (FetchCommand.Next); message bodies are copied from the
//     literal to the caller's writer, never buffered.
//   - Every error is an *Error with an Op and a Kind, and no error text holds
//     a password.
//
// imapclient has no context.Context: each method arranges for the
// connection to be closed when its ctx ends or when Config.Timeout passes
// without progress, which ends the blocked call. A Conn whose call was
// interrupted that way is dead: every later call fails with KindTemp.
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
)

const (
	defaultTimeout = 30 * time.Second
	logoutTimeout  = 2 * time.Second
)

// Conn is one connection to the upstream IMAP server.
//
// Its methods are meant to be called one after another from one goroutine;
// Close may be called from any goroutine, and ends a call in progress.
type Conn struct {
	cfg     Config
	log     *zap.Logger
	client  *imapclient.Client
	netConn net.Conn // what client reads and writes
	timeout time.Duration

	mu       sync.Mutex
	caps     imap.CapSet // refreshed after authentication
	serverID ServerID    // the server's ID answer (RFC 2971), after authentication

	park parkState // a parked connection's IDLE or NOOP loop (idle.go)

	closeOnce sync.Once
	closeErr  error
}

// Dial connects to cfg.Address, waits for the greeting and secures the
// connection per cfg.Security: with SecurityTLS it does the TLS handshake
// first (ServerName from the host when empty, at least TLS 1.2); with
// SecurityStartTLS it reads the greeting, asks for CAPABILITY if the
// greeting did not carry it, and sends STARTTLS only when the server
// advertises it (otherwise it fails with KindPerm; it never continues in
// cleartext); with SecurityNone it stays in cleartext. Dialing and the
// greeting are bounded by cfg.Timeout.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	start := time.Now()
	c, err := dial(ctx, cfg)
	if cfg.Observe != nil {
		cfg.Observe("dial", time.Since(start), err)
	}
	return c, err
}

func dial(ctx context.Context, cfg Config) (*Conn, error) {
	const op = "dial"
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	host, _, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		return nil, &Error{Kind: KindPerm, Op: op, Err: err}
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var tr *tracer
	if cfg.Trace != nil {
		tr = newTracer(cfg.Trace)
	}

	var raw net.Conn
	switch cfg.Security {
	case SecurityTLS:
		tc := tlsConfig(cfg.TLSConfig, host)
		if tc.NextProtos == nil {
			tc.NextProtos = []string{"imap"}
		}
		d := &tls.Dialer{Config: tc}
		raw, err = d.DialContext(dctx, "tcp", cfg.Address)
	case SecurityStartTLS, SecurityNone:
		var d net.Dialer
		raw, err = d.DialContext(dctx, "tcp", cfg.Address)
	default:
		return nil, permError(op, "unknown security %v", cfg.Security)
	}
	if err != nil {
		return nil, dialError(op, dctx, ctx, err)
	}

	var greeted bool // the greeting was consumed by the STARTTLS exchange
	if cfg.Security == SecurityStartTLS {
		raw, err = startTLS(dctx, raw, tlsConfig(cfg.TLSConfig, host), tr)
		if err != nil {
			return nil, dialError("starttls", dctx, ctx, err)
		}
		greeted = true
	}

	var conn net.Conn = raw
	if tr != nil {
		conn = &traceConn{Conn: conn, tr: tr}
	}
	if greeted {
		// After STARTTLS the server sends no new greeting, but imapclient
		// waits for one: give it a plain OK (no capabilities, so that it
		// asks for them again over TLS, as RFC 9051 §6.2.1 requires).
		conn = &prefixConn{Conn: conn, r: io.MultiReader(strings.NewReader("* OK TLS established\r\n"), conn)}
	}
	client := imapclient.New(conn, &imapclient.Options{})
	c := &Conn{cfg: cfg, log: log, client: client, netConn: conn, timeout: timeout}

	stop := context.AfterFunc(dctx, func() { client.Close() })
	err = client.WaitGreeting()
	if !stop() {
		client.Close()
		return nil, dialError(op, dctx, ctx, err)
	}
	if err != nil {
		client.Close()
		return nil, wrap(op, err, phaseCommand)
	}
	log.Debug("upstream connected", zap.String("address", cfg.Address), zap.Stringer("security", cfg.Security))
	return c, nil
}

// dialError classifies an error seen while dialing under dctx, a child of
// ctx with the dial timeout.
func dialError(op string, dctx, ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return &Error{Kind: KindTemp, Reason: ReasonConnection, Op: op, Err: ctx.Err()}
	case dctx.Err() != nil:
		return &Error{Kind: KindTemp, Reason: ReasonConnection, Op: op, Err: fmt.Errorf("timeout: %w", dctx.Err())}
	case err == nil:
		return tempError(op, "connection closed")
	}
	return wrap(op, err, phaseCommand)
}

// Caps returns the capabilities the server advertised after
// authentication; before Login, those of the greeting (or of a CAPABILITY
// command, which it then sends, waiting at most 30 seconds).
func (c *Conn) Caps() imap.CapSet {
	c.mu.Lock()
	caps := c.caps
	c.mu.Unlock()
	if caps != nil {
		return caps
	}
	return c.client.Caps()
}

// HasUIDPlus reports whether the server has UID EXPUNGE (UIDPLUS or
// IMAP4rev2).
func (c *Conn) HasUIDPlus() bool { return c.Caps().Has(imap.CapUIDPlus) }

// HasMove reports whether the server has MOVE (RFC 6851 or IMAP4rev2).
func (c *Conn) HasMove() bool { return c.Caps().Has(imap.CapMove) }

// HasCondStore reports whether the server has CONDSTORE (or QRESYNC).
func (c *Conn) HasCondStore() bool { return c.Caps().Has(imap.CapCondStore) }

// Close sends LOGOUT, waits at most 2 seconds for the answer, and closes
// the connection. It never sends CLOSE or EXPUNGE. It is safe to call more
// than once and from any goroutine; later calls return nil.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		select {
		case <-c.client.Closed():
			c.client.Close()
			return
		default:
		}
		c.unpark()
		done := make(chan error, 1)
		go func() { done <- c.client.Logout().Wait() }()
		timer := time.NewTimer(logoutTimeout)
		defer timer.Stop()
		select {
		case err := <-done:
			if err != nil && !isClosedErr(err) {
				c.closeErr = wrap("logout", err, phaseCommand)
			}
		case <-timer.C:
			c.closeErr = tempError("logout", "no answer within %v", logoutTimeout)
		}
		c.client.Close()
	})
	return c.closeErr
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// ServerID is what the server said of itself in its ID answer (RFC 2971):
// "Microsoft Exchange", "Dovecot", ... Empty when it has no ID.
type ServerID struct {
	Name, Vendor, Version string
}

// ServerID returns the server's ID answer, sent after authentication when
// the server has ID; zero before, or without it.
func (c *Conn) ServerID() ServerID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.serverID
}

// HasCap reports whether the server advertised capability name
// ("X-GM-EXT-1"), case-insensitively.
func (c *Conn) HasCap(name string) bool {
	for cp := range c.Caps() {
		if strings.EqualFold(string(cp), name) {
			return true
		}
	}
	return false
}
