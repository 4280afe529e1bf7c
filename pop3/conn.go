package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// state is a POP3 session state (RFC 1939 §3).
type state int

const (
	stateAuthorization state = iota
	stateTransaction
	stateUpdate
)

// Outcomes, logged at the end of each session.
const (
	outcomeQuit          = "quit"            // QUIT answered +OK
	outcomeQuitFailed    = "quit-failed"     // QUIT in TRANSACTION, Commit failed
	outcomeDropped       = "dropped"         // the client went away
	outcomeTimeout       = "timeout"         // autologout (RFC 1939 §3)
	outcomeTooManyErrors = "too-many-errors" // MaxErrors reached
	outcomeShutdown      = "shutdown"        // Close or Shutdown
	outcomePanic         = "panic"           // a handler or the backend panicked
	outcomeAuthFailed    = "auth-failed"     // ended in AUTHORIZATION after failed logins
	outcomeClosed        = "closed"          // closed by the server for another reason
	outcomeRefused       = "refused"         // ConnLimiter refused the connection
)

var (
	// errEnd ends a session whose outcome is already set.
	errEnd = errors.New("pop3: session ended")
	// errLineTooLong reports a line over the limit; it has been discarded.
	errLineTooLong = errors.New("pop3: line too long")
)

// conn is one POP3 session. Apart from kill and interruptIdle, its methods
// run on the connection's goroutine.
type conn struct {
	srv    *Server
	log    *zap.Logger
	raw    net.Conn // as accepted: closing it ends the session
	nc     net.Conn // raw, or the TLS connection after STLS
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context // cancelled when the session ends or is killed
	cancel context.CancelFunc
	info   ConnInfo

	state        state
	authDeadline time.Time // the end of the time allowed to log in (Server.AuthTimeout)
	lines        int       // command lines read
	errs         int       // protocol errors and failed logins
	authFail     int       // failed logins
	user         string    // USER argument awaiting PASS
	name         string    // the last login name given, for the log
	md           Maildrop
	msgs         []Message
	deleted      []bool // DELE marks, by message number - 1

	nretr, ntop int
	bytesOut    int64 // message octets sent, before dot-stuffing
	start       time.Time
	outcome     string
	reason      string // why the connection was refused, for the log
	release     func() // from ConnLimiter.AcquireConn

	mu     sync.Mutex // guards idle
	idle   bool       // blocked reading a command in AUTHORIZATION
	killed atomic.Bool
}

func newConn(s *Server, nc net.Conn) *conn {
	var b [6]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv:    s,
		log:    s.logger().With(zap.String("session", id)),
		raw:    nc,
		ctx:    ctx,
		cancel: cancel,
		info:   ConnInfo{ID: id}, // RemoteAddr is set by run: it may block (PROXY protocol)
		start:  time.Now(),
	}
	c.setConn(nc)
	return c
}

// setConn directs all I/O to nc with fresh buffers: nothing read or
// written before survives (RFC 2595 §4).
func (c *conn) setConn(nc net.Conn) {
	c.nc = nc
	dw := &deadlineWriter{nc: nc, timeout: orDefault(c.srv.WriteTimeout, DefaultWriteTimeout)}
	if c.br == nil {
		c.br = bufio.NewReader(nc)
		// 16 KiB: a listing of 100,000 messages or a message body goes out
		// in few writes; an idle session holds little.
		c.bw = bufio.NewWriterSize(dw, 16<<10)
		return
	}
	c.br.Reset(nc)
	c.bw.Reset(dw)
}

// kill closes the connection from another goroutine (Close, Shutdown).
func (c *conn) kill() {
	c.killed.Store(true)
	c.cancel()
	closeNow(c.raw)
}

// closeNow closes nc at once: for a TLS connection, without the
// close_notify alert, which could wait on a client that does not read.
func closeNow(nc net.Conn) error {
	if tc, ok := nc.(*tls.Conn); ok {
		return tc.NetConn().Close()
	}
	return nc.Close()
}

// interruptIdle ends the session if it waits for a command before login:
// it has nothing to lose.
func (c *conn) interruptIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle {
		c.killed.Store(true)
		c.raw.SetReadDeadline(time.Now())
	}
}

// serve runs the session, then releases everything it holds.
func (c *conn) serve() {
	defer c.srv.untrack(c)
	defer c.finish()
	defer func() {
		if r := recover(); r != nil {
			c.outcome = outcomePanic
			c.log.Error("panic in POP3 session", zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
		}
	}()
	if err := c.run(); err != nil && c.outcome == "" {
		c.outcome = c.classify(err)
	}
}

// finish closes the connection and the maildrop, and logs the session.
func (c *conn) finish() {
	c.cancel()
	if tc, ok := c.nc.(*tls.Conn); ok && !c.killed.Load() && c.outcome != outcomeDropped && c.outcome != outcomeTimeout {
		// An orderly end over TLS (implicit or STLS) sends close_notify:
		// OpenSSL 3 clients report its absence as an error ("unexpected
		// eof"). It waits at most 5 seconds for a client that does not
		// read.
		tc.Close()
	}
	closeNow(c.raw)
	if c.release != nil {
		c.safely("ConnLimiter release", c.release)
	}
	if c.md != nil {
		c.safely("Maildrop.Close", func() {
			if err := c.md.Close(); err != nil {
				c.log.Warn("closing maildrop", zap.Error(err))
			}
		})
	}
	if c.killed.Load() && c.outcome != outcomeQuit && c.outcome != outcomeQuitFailed && c.outcome != outcomePanic && c.outcome != outcomeRefused {
		c.outcome = outcomeShutdown
	}
	if c.state == stateAuthorization && c.authFail > 0 && c.outcome != outcomePanic && c.outcome != outcomeShutdown {
		c.outcome = outcomeAuthFailed
	}
	if c.outcome == "" {
		c.outcome = outcomeClosed
	}
	fields := []zap.Field{zap.String("remote", addrString(c.info.RemoteAddr))}
	if c.name != "" {
		fields = append(fields, zap.String("user", c.name))
		if lf, ok := c.srv.Backend.(LogFielder); ok {
			c.safely("LogFields", func() { fields = append(fields, lf.LogFields(c.name)...) })
		}
	}
	fields = append(fields,
		zap.Bool("tls", c.info.TLS != nil),
		zap.Int("retr", c.nretr),
		zap.Int("top", c.ntop),
		zap.Int("dele", c.marked()),
		zap.Int64("bytes_out", c.bytesOut),
		zap.Duration("duration", time.Since(c.start)),
		zap.String("outcome", c.outcome),
	)
	if c.reason != "" {
		fields = append(fields, zap.String("reason", c.reason))
	}
	c.log.Info("session", fields...)
	if o := c.srv.Observer; o != nil {
		c.safely("Observer", func() {
			o.SessionEnded(SessionSummary{Outcome: c.outcome, TLS: c.info.TLS != nil, Retr: c.nretr, Top: c.ntop,
				Dele: c.marked(), BytesOut: c.bytesOut, Duration: time.Since(c.start)})
		})
	}
}

// safely calls a backend function whose panic must not escape a deferred
// cleanup.
func (c *conn) safely(what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("panic in "+what, zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
		}
	}()
	f()
}

// classify names the outcome of a session that ended on err.
func (c *conn) classify(err error) string {
	if errors.Is(err, errEnd) {
		return outcomeClosed
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return outcomeTimeout
	}
	return outcomeDropped
}

// run greets the client and reads commands until the session ends.
func (c *conn) run() error {
	// Behind the PROXY protocol, RemoteAddr reads the header: this is the
	// connection's own goroutine, so a slow proxy holds up no one else.
	c.info.RemoteAddr = c.raw.RemoteAddr()
	if o := c.srv.Observer; o != nil {
		c.safely("Observer", o.SessionStarted)
	}
	if cl := c.srv.ConnLimiter; cl != nil {
		release, err := cl.AcquireConn(c.info.RemoteAddr)
		if err != nil {
			return c.refuse(err)
		}
		c.release = release
	}
	// One deadline for the whole AUTHORIZATION state, from here to the
	// login, whatever the client sends meanwhile: a client that keeps
	// talking without logging in must not keep the connection for ever.
	c.authDeadline = time.Now().Add(orDefault(c.srv.AuthTimeout, DefaultAuthTimeout))
	if err := c.handshake(c.authDeadline); err != nil {
		return err
	}
	c.reply("+OK POP3 server ready")
	for {
		// RFC 2449 §6.6: answer pipelined commands in order, and flush
		// only when the client has sent no further complete command.
		if !c.lineBuffered() {
			if err := c.bw.Flush(); err != nil {
				return err
			}
		}
		line, err := c.readCommand()
		if err != nil && !errors.Is(err, errLineTooLong) {
			return err
		}
		if err := c.execute(line, err); err != nil {
			return err
		}
		if c.errs >= orDefault(c.srv.MaxErrors, DefaultMaxErrors) {
			c.reply("-ERR too many errors")
			c.outcome = outcomeTooManyErrors
			return c.bw.Flush()
		}
	}
}

// refuseTimeout bounds the TLS handshake of a refused implicit-TLS
// connection, which is done only to tell the client why.
const refuseTimeout = 10 * time.Second

// handshake runs the TLS handshake of an implicit-TLS connection before
// deadline; it does nothing on a cleartext one.
func (c *conn) handshake(deadline time.Time) error {
	tc, ok := c.raw.(*tls.Conn)
	if !ok {
		return nil
	}
	if err := c.raw.SetDeadline(deadline); err != nil {
		return err
	}
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.log.Debug("TLS handshake failed", zap.Error(err))
		return err
	}
	cs := tc.ConnectionState()
	c.info.TLS = &cs
	return nil
}

// refuse answers a connection the ConnLimiter refused with "-ERR" instead
// of the greeting (RFC 3206 [SYS/TEMP] unless err says otherwise), and
// ends the session. The session line logs err as the reason.
func (c *conn) refuse(err error) error {
	c.outcome = outcomeRefused
	c.reason = err.Error()
	if err := c.handshake(time.Now().Add(min(orDefault(c.srv.AuthTimeout, DefaultAuthTimeout), refuseTimeout))); err != nil {
		return errEnd
	}
	var pe *Error
	if errors.As(err, &pe) {
		c.reply(errorLine(pe))
	} else {
		c.reply("-ERR [" + CodeSysTemp + "] server busy, try again later")
	}
	c.bw.Flush()
	return errEnd
}

// readCommand reads one command line: before login by the deadline of the
// AUTHORIZATION state, after it within the autologout timer.
func (c *conn) readCommand() (string, error) {
	deadline := c.authDeadline
	if c.state != stateAuthorization {
		deadline = time.Now().Add(orDefault(c.srv.ReadTimeout, DefaultReadTimeout))
	}
	if err := c.nc.SetReadDeadline(deadline); err != nil {
		return "", err
	}
	if c.state == stateAuthorization && !c.lineBuffered() {
		c.mu.Lock()
		if c.srv.draining.Load() {
			c.mu.Unlock()
			c.killed.Store(true)
			return "", errEnd
		}
		c.idle = true
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			c.idle = false
			c.mu.Unlock()
		}()
	}
	c.lines++
	limit := orDefault(c.srv.MaxLineLength, DefaultMaxLineLength)
	if c.state != stateAuthorization || limit >= maxSASLLineLength {
		return c.readLine(limit)
	}
	// An AUTH command may carry an initial response as long as a SASL
	// response line (OAuth tokens run to several KiB); other commands
	// keep the short limit.
	line, err := c.readLine(maxSASLLineLength)
	if err == nil && len(line) > limit-2 && !isAuthCommand(line) {
		return "", errLineTooLong
	}
	return line, err
}

// isAuthCommand reports whether line is an AUTH command with arguments.
func isAuthCommand(line string) bool {
	return len(line) > 5 && strings.EqualFold(line[:5], "AUTH ")
}

// readLine reads a line of at most limit octets including its end (CRLF
// or a bare LF), without the end. A longer line is read to its end and
// discarded, and errLineTooLong returned; at most limit octets are kept.
func (c *conn) readLine(limit int) (string, error) {
	var line []byte
	tooLong := false
	for {
		frag, err := c.br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(frag) > limit {
				tooLong, line = true, nil
			} else {
				line = append(line, frag...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		break
	}
	if tooLong {
		return "", errLineTooLong
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
	return string(line), nil
}

// lineBuffered reports whether a complete line waits in the read buffer.
func (c *conn) lineBuffered() bool {
	n := c.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := c.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// reply queues a one-line response; errors surface at the next flush.
func (c *conn) reply(line string) {
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
}

// replyf queues a formatted one-line response.
func (c *conn) replyf(format string, args ...any) {
	fmt.Fprintf(c.bw, format, args...)
	c.bw.WriteString("\r\n")
}

// fail answers "-ERR text" to a client mistake and counts it.
func (c *conn) fail(text string) {
	c.errs++
	c.reply("-ERR " + text)
}

// replyErr answers a backend error: an *Error goes out as
// "-ERR [Code] Text"; any other error is logged and hidden.
func (c *conn) replyErr(what string, err error) {
	var pe *Error
	if errors.As(err, &pe) {
		c.log.Debug(what+" refused", zap.Error(err))
		c.reply(errorLine(pe))
		return
	}
	c.log.Warn(what+" failed", zap.Error(err))
	c.reply("-ERR [" + CodeSysTemp + "] internal error, try again later")
}

// errorLine is the response line for e, cleaned of anything that would
// break the framing (CR, LF, other controls) and kept within RFC 2449's
// 512 octets.
func errorLine(e *Error) string {
	s := "-ERR "
	if e.Code != "" {
		s += "[" + e.Code + "] "
	}
	s += e.Text
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 510 {
		s = strings.ToValidUTF8(s[:510], "")
	}
	return s
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// deadlineWriter sets the write deadline before each write to the
// connection, so a client that stops reading cannot hold the session.
type deadlineWriter struct {
	nc      net.Conn
	timeout time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if err := w.nc.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	return w.nc.Write(p)
}
