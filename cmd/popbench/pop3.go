package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/popbridge/popbridge/internal/popclient"
)

// Error kinds, as counted in the report.
const (
	kindDial     = "dial"     // could not connect
	kindGreeting = "greeting" // no +OK greeting
	kindAuth     = "auth"     // USER/PASS refused (not IN-USE)
	kindInUse    = "in-use"   // -ERR [IN-USE]: the maildrop is locked
	// Any other RFC 3206 code is a kind of its own: "err-sys/temp" ...
	kindERR      = "err-response"  // -ERR to STAT, LIST, UIDL, RETR or QUIT
	kindProtocol = "protocol"      // a malformed or inconsistent answer
	kindSize     = "size-mismatch" // RETR sent other octets than LIST announced
	kindTimeout  = "timeout"       // no progress within -timeout
	kindIO       = "io"            // the connection failed
	kindAborted  = "aborted"       // the run ended (-max-time) in the middle
)

// sessionError is a failed session, with its kind.
type sessionError struct {
	kind string
	err  error
}

func (e *sessionError) Error() string { return e.kind + ": " + e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

func failf(kind, format string, args ...any) error {
	return &sessionError{kind: kind, err: fmt.Errorf(format, args...)}
}

// kindOf classifies err for the report.
func kindOf(err error) string {
	var se *sessionError
	if errors.As(err, &se) {
		return se.kind
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return kindTimeout
	}
	return kindIO
}

// client is popbench's POP3 session: the client of internal/popclient,
// which keeps no message in memory here (multi-line answers are counted
// and thrown away as they arrive), with each failure given its kind.
type client struct {
	*popclient.Conn
}

// dial connects to addr and reads the greeting.
func dial(addr string, timeout time.Duration) (*client, error) {
	c, greet, err := popclient.Dial(addr, popclient.Options{Timeout: timeout})
	var se *popclient.StatusError
	switch {
	case errors.As(err, &se):
		return nil, failf(kindGreeting, "greeting %q", popclient.Clip(greet))
	case errors.Is(err, popclient.ErrLineTooLong):
		return nil, failf(kindProtocol, "greeting longer than the read buffer")
	case err != nil && !isReadError(err):
		return nil, &sessionError{kind: kindDial, err: err}
	case err != nil:
		return nil, err
	}
	return &client{c}, nil
}

// isReadError tells a failed read of the greeting from a failed dial.
func isReadError(err error) bool {
	var op *net.OpError
	return !errors.As(err, &op) || op.Op != "dial"
}

func (c *client) close() error { return c.Close() }

// send queues a command line; flush sends what is queued.
func (c *client) send(cmd string) { c.Send(cmd) }

func (c *client) flush() error { return c.Flush() }

// status reads a status line and fails unless it is +OK. what names the
// command for the error; -ERR [IN-USE] and -ERR to a login get kinds of
// their own.
func (c *client) status(what string) (string, error) {
	line, err := c.Line()
	if errors.Is(err, popclient.ErrLineTooLong) {
		return "", failf(kindProtocol, "response line longer than %d octets", c.Reader().Size())
	}
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(line, "+OK") {
		return line, nil
	}
	kind := kindERR
	code := ""
	if rest, ok := strings.CutPrefix(line, "-ERR ["); ok {
		code, _, _ = strings.Cut(rest, "]")
	}
	switch {
	case !strings.HasPrefix(line, "-ERR"):
		kind = kindProtocol
	case code == "IN-USE":
		kind = kindInUse
	case code != "" && code != "AUTH":
		kind = "err-" + strings.ToLower(code) // RFC 3206: SYS/TEMP, SYS/PERM, LOGIN-DELAY ...
	case what == "USER" || what == "PASS":
		kind = kindAuth
	}
	return "", failf(kind, "%s: %q", what, popclient.Clip(line))
}

// cmd sends one command and reads its status line.
func (c *client) cmd(what, line string) (string, error) {
	c.send(line)
	if err := c.flush(); err != nil {
		return "", err
	}
	return c.status(what)
}

// login sends USER and PASS.
func (c *client) login(user, pass string) error {
	if _, err := c.cmd("USER", "USER "+user); err != nil {
		return err
	}
	_, err := c.cmd("PASS", "PASS "+pass)
	return err
}

// stat sends STAT and returns the message count and octets.
func (c *client) stat() (n int, size int64, err error) {
	line, err := c.cmd("STAT", "STAT")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(line)
	if len(f) < 3 {
		return 0, 0, failf(kindProtocol, "STAT: %q", popclient.Clip(line))
	}
	n, err1 := strconv.Atoi(f[1])
	size, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, failf(kindProtocol, "STAT: %q", popclient.Clip(line))
	}
	return n, size, nil
}

// listing sends LIST or UIDL and calls fn with each line of the answer
// (dot-unstuffed, without its line end); it returns the number of lines.
func (c *client) listing(cmd string, fn func(line []byte) error) (int, error) {
	if _, err := c.cmd(cmd, cmd); err != nil {
		return 0, err
	}
	n, err := c.ListingBody(fn)
	if errors.Is(err, popclient.ErrLineTooLong) {
		return n, failf(kindProtocol, "%s: line longer than %d octets", cmd, c.Reader().Size())
	}
	return n, err
}

// sizes sends LIST and returns the size of each message, by number - 1.
func (c *client) sizes(count int) ([]int64, error) {
	out := make([]int64, count)
	_, err := c.listing("LIST", func(line []byte) error {
		num, size, ok := bytes.Cut(line, []byte(" "))
		if !ok {
			return failf(kindProtocol, "LIST line %q", popclient.Clip(string(line)))
		}
		size, _, _ = bytes.Cut(size, []byte(" "))
		i, err1 := strconv.Atoi(string(num))
		s, err2 := strconv.ParseInt(string(size), 10, 64)
		if err1 != nil || err2 != nil || i < 1 || i > count {
			return failf(kindProtocol, "LIST line %q (STAT said %d messages)", popclient.Clip(string(line)), count)
		}
		out[i-1] = s
		return nil
	})
	return out, err
}

// body reads a multi-line answer after its status line up to the
// terminating dot, dot-unstuffed, and returns its octets (line ends
// included, as RFC 1939 counts them). Nothing is kept. A server with bare
// LFs ends it with ".LF", which is taken too.
func (c *client) body() (int64, error) {
	return popclient.ReadBodyLenient(c.Reader(), nil, c.Extend)
}

// quit sends QUIT and waits for its answer.
func (c *client) quit() error {
	_, err := c.cmd("QUIT", "QUIT")
	return err
}
