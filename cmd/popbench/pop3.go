package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
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

// client is a minimal POP3 client (RFC 1939) that keeps no message in
// memory: multi-line answers are counted and thrown away as they arrive.
type client struct {
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
	read    int64 // octets received, all answers
}

// countReader counts what the client reads from the connection.
type countReader struct {
	r io.Reader
	n *int64
}

func (c countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// dial connects to addr and reads the greeting.
func dial(addr string, timeout time.Duration) (*client, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, &sessionError{kind: kindDial, err: err}
	}
	c := &client{conn: conn, w: bufio.NewWriterSize(conn, 4096), timeout: timeout}
	c.r = bufio.NewReaderSize(countReader{conn, &c.read}, 64<<10)
	c.deadline()
	line, err := c.line()
	if err != nil {
		conn.Close()
		return nil, err
	}
	if !strings.HasPrefix(line, "+OK") {
		conn.Close()
		return nil, failf(kindGreeting, "greeting %q", clip(line))
	}
	return c, nil
}

func (c *client) close() error { return c.conn.Close() }

// deadline gives the next exchange -timeout to make progress.
func (c *client) deadline() { c.conn.SetDeadline(time.Now().Add(c.timeout)) }

// send queues a command line; flush sends what is queued.
func (c *client) send(cmd string) {
	c.w.WriteString(cmd)
	c.w.WriteString("\r\n")
}

func (c *client) flush() error {
	c.deadline()
	return c.w.Flush()
}

// line reads one response line, without its line end.
func (c *client) line() (string, error) {
	b, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", failf(kindProtocol, "response line longer than %d octets", c.r.Size())
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(b, "\r\n")), nil
}

// status reads a status line and fails unless it is +OK. what names the
// command for the error; -ERR [IN-USE] and -ERR to a login get kinds of
// their own.
func (c *client) status(what string) (string, error) {
	line, err := c.line()
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
	return "", failf(kind, "%s: %q", what, clip(line))
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
		return 0, 0, failf(kindProtocol, "STAT: %q", clip(line))
	}
	n, err1 := strconv.Atoi(f[1])
	size, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, failf(kindProtocol, "STAT: %q", clip(line))
	}
	return n, size, nil
}

// listing sends LIST or UIDL and calls fn with each line of the answer
// (dot-unstuffed, without its line end); it returns the number of lines.
func (c *client) listing(cmd string, fn func(line []byte) error) (int, error) {
	if _, err := c.cmd(cmd, cmd); err != nil {
		return 0, err
	}
	n := 0
	for {
		c.deadline()
		b, err := c.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return n, failf(kindProtocol, "%s: line longer than %d octets", cmd, c.r.Size())
		}
		if err != nil {
			return n, err
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) > 0 && b[0] == '.' {
			if len(b) == 1 {
				return n, nil
			}
			b = b[1:]
		}
		n++
		if fn != nil {
			if err := fn(b); err != nil {
				return n, err
			}
		}
	}
}

// sizes sends LIST and returns the size of each message, by number - 1.
func (c *client) sizes(count int) ([]int64, error) {
	out := make([]int64, count)
	_, err := c.listing("LIST", func(line []byte) error {
		num, size, ok := bytes.Cut(line, []byte(" "))
		if !ok {
			return failf(kindProtocol, "LIST line %q", clip(string(line)))
		}
		size, _, _ = bytes.Cut(size, []byte(" "))
		i, err1 := strconv.Atoi(string(num))
		s, err2 := strconv.ParseInt(string(size), 10, 64)
		if err1 != nil || err2 != nil || i < 1 || i > count {
			return failf(kindProtocol, "LIST line %q (STAT said %d messages)", clip(string(line)), count)
		}
		out[i-1] = s
		return nil
	})
	return out, err
}

// body reads a multi-line answer after its status line up to the
// terminating dot, dot-unstuffed, and returns its octets (line ends
// included, as RFC 1939 counts them). Nothing is kept.
func (c *client) body() (int64, error) {
	return readBody(c.r, c.deadline)
}

// readBody reads a dot-stuffed multi-line body from r (RFC 1939 §3) and
// returns its octets after unstuffing, without the terminating line.
// progress is called before each read that may block.
func readBody(r *bufio.Reader, progress func()) (int64, error) {
	var n int64
	bol := true
	for {
		if progress != nil && r.Buffered() == 0 {
			progress()
		}
		b, err := r.ReadSlice('\n')
		if bol && len(b) > 0 && b[0] == '.' {
			if err == nil && (len(b) == 2 || len(b) == 3 && b[1] == '\r') {
				return n, nil // ".\r\n" (or ".\n")
			}
			b = b[1:]
		}
		n += int64(len(b))
		switch err {
		case nil:
			bol = true
		case bufio.ErrBufferFull:
			bol = false
		case io.EOF:
			return n, io.ErrUnexpectedEOF
		default:
			return n, err
		}
	}
}

// quit sends QUIT and waits for its answer.
func (c *client) quit() error {
	_, err := c.cmd("QUIT", "QUIT")
	return err
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}
