// Package popclient is the POP3 client of popbridge's tests and of
// popbench: a small RFC 1939 client that keeps what the server sent byte
// for byte. Unlike a general-purpose client it keeps long lines whole,
// keeps bare CRs and LFs as they came and undoes dot-stuffing itself, so a
// test can compare a retrieved message with the stored one octet by octet;
// and it can count a multi-line answer without keeping it, for load tests.
//
// Methods return errors and never stop a test by themselves; test helpers
// wrap a Conn and turn errors into test failures.
package popclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrLineTooLong is returned by Line for a status line longer than the
// read buffer.
var ErrLineTooLong = errors.New("popclient: response line longer than the read buffer")

// Conn is one POP3 connection.
type Conn struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	// Timeout is the time each exchange has to make progress: every read
	// that may block and every flush extends the connection's deadline by
	// it. Zero leaves the deadlines alone.
	Timeout time.Duration
	read    int64
}

// Options of a connection. The zero value is a 64 KiB read buffer.
type Options struct {
	// Local is the local IP address to dial from ("127.0.0.2"); empty
	// lets the system choose.
	Local string
	// Control, if not nil, is the dialer's Control (socket options).
	Control func(network, address string, c syscall.RawConn) error
	// Timeout bounds the dial and becomes Conn.Timeout.
	Timeout time.Duration
	// Buffer is the read buffer size (64 KiB when zero). A multi-line
	// line longer than it is still read whole.
	Buffer int
}

// Dial connects to addr and reads the greeting, which must be +OK; the
// greeting is returned.
func Dial(addr string, o Options) (*Conn, string, error) {
	c, err := Connect(addr, o)
	if err != nil {
		return nil, "", err
	}
	greet, err := c.Line()
	if err != nil {
		c.Close()
		return nil, greet, err
	}
	if !strings.HasPrefix(greet, "+OK") {
		c.Close()
		return nil, greet, &StatusError{Cmd: "greeting", Line: greet}
	}
	return c, greet, nil
}

// Connect connects to addr and reads nothing.
func Connect(addr string, o Options) (*Conn, error) {
	d := net.Dialer{Timeout: o.Timeout, Control: o.Control}
	if d.Timeout == 0 {
		d.Timeout = 10 * time.Second
	}
	if o.Local != "" {
		la, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(o.Local, "0"))
		if err != nil {
			return nil, err
		}
		d.LocalAddr = la
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return New(nc, o), nil
}

// New wraps an open connection (a TLS one, say) without reading anything.
func New(nc net.Conn, o Options) *Conn {
	size := o.Buffer
	if size <= 0 {
		size = 64 << 10
	}
	c := &Conn{conn: nc, w: bufio.NewWriterSize(nc, 4096), Timeout: o.Timeout}
	c.r = bufio.NewReaderSize(countReader{nc, &c.read}, size)
	return c
}

// NetConn is the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.conn }

// Reader is the connection's read buffer, for tests that read raw bytes.
func (c *Conn) Reader() *bufio.Reader { return c.r }

// Received is the number of octets read from the connection so far.
func (c *Conn) Received() int64 { return c.read }

// Close closes the connection without QUIT.
func (c *Conn) Close() error { return c.conn.Close() }

// Extend gives the next exchange Timeout to make progress.
func (c *Conn) Extend() { c.progress() }

func (c *Conn) progress() {
	if c.Timeout > 0 {
		c.conn.SetDeadline(time.Now().Add(c.Timeout))
	}
}

// Send queues a command line (CRLF is added); Flush sends what is queued.
// Queuing several commands before one Flush pipelines them.
func (c *Conn) Send(line string) {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
}

// Flush sends the queued commands.
func (c *Conn) Flush() error {
	c.progress()
	return c.w.Flush()
}

// Line reads one response line and returns it without its line end. On a
// read error it returns what it got with the error.
func (c *Conn) Line() (string, error) {
	if c.r.Buffered() == 0 {
		c.progress()
	}
	b, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return string(b), ErrLineTooLong
	}
	if err != nil {
		return string(b), err
	}
	return string(bytes.TrimRight(b, "\r\n")), nil
}

// Cmd sends one command and returns its status line, +OK or not.
func (c *Conn) Cmd(line string) (string, error) {
	c.Send(line)
	if err := c.Flush(); err != nil {
		return "", err
	}
	return c.Line()
}

// StatusError is a status line other than +OK.
type StatusError struct {
	Cmd  string // the command's name
	Line string // the status line
}

func (e *StatusError) Error() string { return fmt.Sprintf("%s: %q", e.Cmd, Clip(e.Line)) }

// OK sends one command and returns its status line; anything but +OK is a
// *StatusError.
func (c *Conn) OK(line string) (string, error) {
	status, err := c.Cmd(line)
	if err != nil {
		return status, err
	}
	if !strings.HasPrefix(status, "+OK") {
		name, _, _ := strings.Cut(line, " ")
		return status, &StatusError{Cmd: name, Line: status}
	}
	return status, nil
}

// Login sends USER and PASS.
func (c *Conn) Login(user, pass string) error {
	if _, err := c.OK("USER " + user); err != nil {
		return err
	}
	_, err := c.OK("PASS " + pass)
	return err
}

// Multi reads the body of a multi-line answer after its status line and
// returns it unstuffed, byte for byte.
func (c *Conn) Multi() ([]byte, error) {
	return ReadMulti(c.r, c.progress)
}

// Count reads the body of a multi-line answer and returns its octets after
// unstuffing, keeping nothing.
func (c *Conn) Count() (int64, error) {
	return ReadBody(c.r, nil, c.progress)
}

// Listing sends cmd (LIST, UIDL) and calls fn with each line of the answer,
// unstuffed and without its line end; it returns the number of lines. A
// line longer than the read buffer is an error.
func (c *Conn) Listing(cmd string, fn func(line []byte) error) (int, error) {
	if _, err := c.OK(cmd); err != nil {
		return 0, err
	}
	n, err := c.ListingBody(fn)
	if err != nil {
		err = fmt.Errorf("%s: %w", cmd, err)
	}
	return n, err
}

// ListingBody reads the body of a listing after its +OK status line, as
// Listing does.
func (c *Conn) ListingBody(fn func(line []byte) error) (int, error) {
	n := 0
	for {
		if c.r.Buffered() == 0 {
			c.progress()
		}
		b, err := c.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return n, ErrLineTooLong
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

// Entry is one message of a listing.
type Entry struct {
	N    int
	Size int64
	UIDL string
}

// List sends LIST and then UIDL and returns both together; the two must
// name the same messages in the same order.
func (c *Conn) List() ([]Entry, error) {
	var out []Entry
	if _, err := c.Listing("LIST", func(l []byte) error {
		var e Entry
		if _, err := fmt.Sscanf(string(l), "%d %d", &e.N, &e.Size); err != nil {
			return fmt.Errorf("LIST line %q: %v", l, err)
		}
		out = append(out, e)
		return nil
	}); err != nil {
		return out, err
	}
	i := 0
	_, err := c.Listing("UIDL", func(l []byte) error {
		f := strings.Fields(string(l))
		n := -1
		if len(f) == 2 {
			n, _ = strconv.Atoi(f[0])
		}
		if i >= len(out) || out[i].N != n {
			return fmt.Errorf("UIDL line %q does not match LIST", l)
		}
		out[i].UIDL = f[1]
		i++
		return nil
	})
	return out, err
}

// Drain reads until the server closes the connection and returns what it
// read.
func (c *Conn) Drain() ([]byte, error) {
	c.progress()
	return io.ReadAll(c.r)
}

// ReadBody reads a dot-stuffed multi-line body (RFC 1939 §3) from r up to
// and without its terminating line, writes the unstuffed octets to w (nil:
// nowhere) and returns their count. Only ".CRLF" at the start of a line
// ends the body; a line longer than r's buffer is kept whole. progress, if
// not nil, is called before each read that may block. A stream that ends
// before the terminator is io.ErrUnexpectedEOF.
func ReadBody(r *bufio.Reader, w io.Writer, progress func()) (int64, error) {
	return readBody(r, w, progress, false)
}

// ReadMulti is ReadBody into a byte slice.
func ReadMulti(r *bufio.Reader, progress func()) ([]byte, error) {
	var b bytes.Buffer
	_, err := ReadBody(r, &b, progress)
	return b.Bytes(), err
}

// ReadBodyLenient is ReadBody that also takes ".LF" as the terminator, as
// a server that ends its lines with bare LFs sends it.
func ReadBodyLenient(r *bufio.Reader, w io.Writer, progress func()) (int64, error) {
	return readBody(r, w, progress, true)
}

func readBody(r *bufio.Reader, w io.Writer, progress func(), bareLF bool) (int64, error) {
	var n int64
	bol := true
	for {
		if progress != nil && r.Buffered() == 0 {
			progress()
		}
		b, err := r.ReadSlice('\n')
		if bol && len(b) > 0 && b[0] == '.' {
			if err == nil && (string(b) == ".\r\n" || bareLF && string(b) == ".\n") {
				return n, nil
			}
			b = b[1:]
		}
		n += int64(len(b))
		if w != nil {
			w.Write(b)
		}
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

// Clip shortens s for an error message.
func Clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
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
