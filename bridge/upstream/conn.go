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
	"bufio"
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
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"
)

const (
	defaultTimeout = 30 * time.Second
	logoutTimeout  = 2 * time.Second
)

// clientID is what ID sends after login (RFC 2971).
var clientID = &imap.IDData{Name: "popbridge"}

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

	mu   sync.Mutex
	caps imap.CapSet // refreshed after authentication

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

// tlsConfig returns a copy of base with ServerName set to host when empty
// and at least TLS 1.2.
func tlsConfig(base *tls.Config, host string) *tls.Config {
	var tc *tls.Config
	if base != nil {
		tc = base.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	return tc
}

// prefixConn reads from r, then from the connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// maxPreTLSLine bounds a line read before STARTTLS.
const maxPreTLSLine = 64 << 10

// startTLS reads the greeting on raw, checks that STARTTLS is advertised
// (asking CAPABILITY when the greeting did not list them), sends STARTTLS
// and does the TLS handshake. It refuses PREAUTH (RFC 9051 §7.1.4) and a
// server that sent anything after its STARTTLS response before the
// handshake (the STARTTLS response injection of CVE-2011-0411 et al.).
func startTLS(ctx context.Context, raw net.Conn, tc *tls.Config, tr *tracer) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	conn, err := startTLSExchange(ctx, raw, tc, tr)
	if !stop() || err != nil {
		raw.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return conn, nil
}

func startTLSExchange(ctx context.Context, raw net.Conn, tc *tls.Config, tr *tracer) (net.Conn, error) {
	const op = "starttls"
	br := bufio.NewReaderSize(raw, 4096)
	readLine := func() (string, error) {
		var line []byte
		for {
			frag, err := br.ReadSlice('\n')
			line = append(line, frag...)
			if len(line) > maxPreTLSLine {
				return "", tempError(op, "line too long")
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				return "", err
			}
			s := strings.TrimRight(string(line), "\r\n")
			if tr != nil {
				tr.line(false, s)
			}
			return s, nil
		}
	}
	writeLine := func(s string) error {
		if tr != nil {
			tr.line(true, s)
		}
		_, err := io.WriteString(raw, s+"\r\n")
		return err
	}

	greeting, err := readLine()
	if err != nil {
		return nil, err
	}
	var caps map[string]bool
	switch status, rest := untagged(greeting); status {
	case "OK":
		caps = capsFromCode(rest)
	case "PREAUTH":
		return nil, permError(op, "server sent PREAUTH on a cleartext connection")
	case "BYE":
		return nil, tempError(op, "server refused the connection: %s", rest)
	default:
		return nil, tempError(op, "unexpected greeting %q", truncate(greeting, 80))
	}
	if caps == nil {
		if err := writeLine("P1 CAPABILITY"); err != nil {
			return nil, err
		}
		for {
			line, err := readLine()
			if err != nil {
				return nil, err
			}
			if status, rest := untagged(line); status == "CAPABILITY" {
				caps = capList(rest)
				continue
			} else if status == "BYE" {
				return nil, tempError(op, "server closed the connection: %s", rest)
			} else if status != "" {
				continue
			}
			if status, _ := tagged(line, "P1"); status != "OK" {
				return nil, tempError(op, "CAPABILITY failed: %s", truncate(line, 80))
			}
			break
		}
	}
	if !caps["STARTTLS"] {
		return nil, permError(op, "server does not offer STARTTLS")
	}
	if err := writeLine("P2 STARTTLS"); err != nil {
		return nil, err
	}
	for {
		line, err := readLine()
		if err != nil {
			return nil, err
		}
		if status, rest := untagged(line); status == "BYE" {
			return nil, tempError(op, "server closed the connection: %s", rest)
		} else if status != "" {
			continue
		}
		if status, rest := tagged(line, "P2"); status != "OK" {
			return nil, permError(op, "server refused STARTTLS: %s", truncate(rest, 80))
		}
		break
	}
	if br.Buffered() > 0 {
		return nil, permError(op, "server sent data before the TLS handshake")
	}
	tlsConn := tls.Client(raw, tc)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tlsConn, nil
}

// untagged splits "* STATUS rest" into STATUS (upper case) and rest; it
// returns "" for a line that is not untagged.
func untagged(line string) (status, rest string) {
	after, ok := strings.CutPrefix(line, "* ")
	if !ok {
		return "", ""
	}
	status, rest, _ = strings.Cut(after, " ")
	return strings.ToUpper(status), rest
}

// tagged splits "tag STATUS rest" into STATUS (upper case) and rest if the
// line carries tag; it returns "" otherwise.
func tagged(line, tag string) (status, rest string) {
	after, ok := strings.CutPrefix(line, tag+" ")
	if !ok {
		return "", ""
	}
	status, rest, _ = strings.Cut(after, " ")
	return strings.ToUpper(status), rest
}

// capsFromCode parses a "[CAPABILITY ...] text" response text; nil when
// the text has no CAPABILITY code.
func capsFromCode(text string) map[string]bool {
	code, ok := strings.CutPrefix(text, "[")
	if !ok {
		return nil
	}
	code, _, ok = strings.Cut(code, "]")
	if !ok {
		return nil
	}
	name, rest, _ := strings.Cut(code, " ")
	if !strings.EqualFold(name, "CAPABILITY") {
		return nil
	}
	return capList(rest)
}

func capList(s string) map[string]bool {
	caps := make(map[string]bool)
	for _, c := range strings.Fields(s) {
		caps[strings.ToUpper(c)] = true
	}
	return caps
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// watch ends a blocked call: it closes the client when ctx ends or when the
// Conn's timeout passes without a touch.
type watch struct {
	c       *Conn
	stopCtx func() bool
	timer   *time.Timer

	mu       sync.Mutex
	finished bool
	cause    error
}

func (c *Conn) watch(ctx context.Context) *watch {
	w := &watch{c: c}
	w.stopCtx = context.AfterFunc(ctx, func() { w.fire(ctx.Err()) })
	w.timer = time.AfterFunc(c.timeout, func() {
		w.fire(fmt.Errorf("no answer within %v: %w", c.timeout, context.DeadlineExceeded))
	})
	return w
}

func (w *watch) fire(cause error) {
	w.mu.Lock()
	if w.finished || w.cause != nil {
		w.mu.Unlock()
		return
	}
	w.cause = cause
	w.mu.Unlock()
	w.c.client.Close()
}

// touch restarts the timeout: the call made progress.
func (w *watch) touch() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.finished && w.cause == nil {
		w.timer.Reset(w.c.timeout)
	}
}

// pause stops the timeout; only ctx ends the call from now on (used while a
// message body streams to a client that may be slow).
func (w *watch) pause() { w.timer.Stop() }

// literal returns lit with the timeout running only while a Read waits for
// the upstream: a server that stalls in the middle of a body is cut off
// after the timeout, while the time spent writing to a slow POP3 client
// (bounded by the POP3 side's write timeout) does not count.
func (w *watch) literal(lit imap.LiteralReader) imap.LiteralReader {
	return watchedLiteral{LiteralReader: lit, w: w}
}

type watchedLiteral struct {
	imap.LiteralReader
	w *watch
}

func (r watchedLiteral) Read(p []byte) (int, error) {
	r.w.touch()
	n, err := r.LiteralReader.Read(p)
	r.w.pause()
	return n, err
}

// done stops watching and returns why the client was closed, if it was.
func (w *watch) done() error {
	w.stopCtx()
	w.timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finished = true
	return w.cause
}

// end stops w and returns err as an *Error for op: the watch's cause if it
// fired, else err classified for ph.
func (w *watch) end(op string, err error, ph phase) error {
	if cause := w.done(); cause != nil && err != nil {
		return &Error{Kind: KindTemp, Reason: ReasonConnection, Op: op, Err: cause}
	}
	return wrap(op, err, ph)
}

// abort drops the connection at once, without waiting for imapclient's
// reader (which may wait for a literal to be consumed).
func (c *Conn) abort() {
	c.netConn.Close()
	go c.client.Close()
}

// alive fails fast on a connection that is already closed.
func (c *Conn) alive(op string) error {
	select {
	case <-c.client.Closed():
		return tempError(op, "connection closed")
	default:
		return nil
	}
}

// Login sends LOGIN with username and password, or, when the server
// advertises LOGINDISABLED and AUTH=PLAIN, AUTHENTICATE PLAIN instead. Then
// it asks for the new CAPABILITY list and, when ID is advertised, sends ID
// ("name" "popbridge"), ignoring its outcome.
//
// A NO is KindAuth unless its response code says the failure is temporary
// (UNAVAILABLE, LIMIT, INUSE, SERVERBUG ...: KindTemp) or that the server
// wants TLS (PRIVACYREQUIRED: KindPerm); BYE and I/O errors are KindTemp.
// A PREAUTH greeting is refused with KindPerm: the credentials would not be
// checked.
func (c *Conn) Login(ctx context.Context, username, password string) error {
	const op = "login"
	if err := c.alive(op); err != nil {
		return err
	}
	w := c.watch(ctx)
	err := c.login(op, username, password)
	if err == nil {
		err = c.afterAuth()
	}
	if err = w.end(op, err, phaseLogin); err != nil {
		return err
	}
	c.log.Debug("upstream login", zap.Int("caps", len(c.Caps())))
	return nil
}

func (c *Conn) login(op, username, password string) error {
	if err := c.checkUnauthenticated(op); err != nil {
		return err
	}
	caps := c.client.Caps()
	if caps == nil {
		return tempError(op, "no capabilities")
	}
	if caps.Has(imap.CapLoginDisabled) {
		if !caps.Has(imap.AuthCap(sasl.Plain)) {
			return permError(op, "server disabled LOGIN and offers no AUTH=PLAIN (does it want TLS?)")
		}
		return c.client.Authenticate(sasl.NewPlainClient("", username, password))
	}
	return c.client.Login(username, password).Wait()
}

func (c *Conn) checkUnauthenticated(op string) error {
	switch c.client.State() {
	case imap.ConnStateNotAuthenticated:
		return nil
	case imap.ConnStateAuthenticated, imap.ConnStateSelected:
		return permError(op, "already authenticated (PREAUTH greeting?): refusing to skip the credential check")
	}
	return tempError(op, "connection closed")
}

// Authenticate sends AUTHENTICATE and runs the SASL exchange of sc (for
// XOAUTH2 or OAUTHBEARER), then refreshes the capabilities and sends ID like
// Login. Errors are classified like Login's; an error of sc itself closes
// the connection, since the server is left waiting inside the exchange.
func (c *Conn) Authenticate(ctx context.Context, sc sasl.Client) error {
	const op = "authenticate"
	if err := c.alive(op); err != nil {
		return err
	}
	w := c.watch(ctx)
	err := c.checkUnauthenticated(op)
	if err == nil {
		err = c.client.Authenticate(sc)
		var ie *imap.Error
		if err != nil && !errors.As(err, &ie) {
			c.client.Close()
			var oe *sasl.OAuthBearerError
			if errors.As(err, &oe) {
				err = &Error{Kind: KindAuth, Op: op, Err: err}
			}
		}
	}
	if err == nil {
		err = c.afterAuth()
	}
	return w.end(op, err, phaseLogin)
}

// afterAuth asks for the capabilities again (imapclient resets its own copy
// after authentication, racily: a CAPABILITY of our own is the reliable
// way) and sends ID when the server has it.
func (c *Conn) afterAuth() error {
	caps, err := c.client.Capability().Wait()
	if err != nil {
		return err
	}
	if caps == nil {
		return tempError("capability", "no CAPABILITY response")
	}
	c.mu.Lock()
	c.caps = caps
	c.mu.Unlock()
	if caps.Has(imap.CapID) {
		// Some servers (NetEase) refuse SELECT without ID. Its failure is
		// not ours to report.
		if _, err := c.client.ID(clientID).Wait(); err != nil {
			c.log.Debug("upstream ID failed", zap.Error(err))
		}
	}
	return nil
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

// Select sends SELECT mailbox (read-write), with (CONDSTORE) when the server
// advertises CONDSTORE, and returns what the server reported. A mailbox
// that does not exist is KindPerm: NO [NONEXISTENT], and also a NO without
// a response code, which is how Dovecot 2.3 says it.
func (c *Conn) Select(ctx context.Context, mailbox string) (Status, error) {
	const op = "select"
	if err := c.alive(op); err != nil {
		return Status{}, err
	}
	w := c.watch(ctx)
	sd, err := c.client.Select(mailbox, &imap.SelectOptions{CondStore: c.HasCondStore()}).Wait()
	if err := w.end(op, err, phaseSelect); err != nil {
		return Status{}, err
	}
	st := Status{
		UIDValidity:   sd.UIDValidity,
		UIDNext:       uint32(sd.UIDNext),
		NumMessages:   sd.NumMessages,
		HighestModSeq: sd.HighestModSeq,
	}
	c.log.Debug("upstream select", zap.String("mailbox", mailbox),
		zap.Uint32("uidvalidity", st.UIDValidity), zap.Uint32("uidnext", st.UIDNext),
		zap.Uint32("messages", st.NumMessages))
	return st, nil
}

// Noop sends NOOP.
func (c *Conn) Noop(ctx context.Context) error {
	const op = "noop"
	if err := c.alive(op); err != nil {
		return err
	}
	w := c.watch(ctx)
	err := c.client.Noop().Wait()
	return w.end(op, err, phaseCommand)
}

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
