package bridge

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/popclient"
)

// popConn is the byte-exact POP3 client of internal/popclient bound to a
// test: every failure to talk POP3 stops the test.
type popConn struct {
	t testing.TB
	c *popclient.Conn
	// conn and r are the connection and its read buffer, for tests that
	// read or write raw bytes.
	conn net.Conn
	r    *bufio.Reader
}

func dialPOP(t testing.TB, addr string) *popConn {
	t.Helper()
	return dialPOPFrom(t, "", addr)
}

// dialPOPFrom dials addr from the local address local ("" for any) and
// reads the +OK greeting.
func dialPOPFrom(t testing.TB, local, addr string) *popConn {
	t.Helper()
	c, greet, err := popclient.Dial(addr, popclient.Options{Local: local, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("dial %s: %v (greeting %q)", addr, err, greet)
	}
	t.Cleanup(func() { c.Close() })
	return wrapPOP(t, c)
}

// popOver is a popConn over an open connection (a TLS one, say); it reads
// nothing.
func popOver(t testing.TB, conn net.Conn) *popConn {
	return wrapPOP(t, popclient.New(conn, popclient.Options{Timeout: 30 * time.Second}))
}

func wrapPOP(t testing.TB, c *popclient.Conn) *popConn {
	return &popConn{t: t, c: c, conn: c.NetConn(), r: c.Reader()}
}

// line reads one response line without its CRLF.
func (c *popConn) line() string {
	c.t.Helper()
	s, err := c.c.Line()
	if err != nil {
		c.t.Fatalf("reading a response: %v (got %q)", err, s)
	}
	return s
}

// cmd sends a command and returns the status line.
func (c *popConn) cmd(format string, args ...any) string {
	c.t.Helper()
	c.send(format, args...)
	return c.line()
}

func (c *popConn) send(format string, args ...any) {
	c.t.Helper()
	c.c.Send(fmt.Sprintf(format, args...))
	if err := c.c.Flush(); err != nil {
		c.t.Fatalf("sending: %v", err)
	}
}

// ok sends a command and fails the test unless it is answered +OK.
func (c *popConn) ok(format string, args ...any) string {
	c.t.Helper()
	line := c.cmd(format, args...)
	if !strings.HasPrefix(line, "+OK") {
		c.t.Fatalf("%s: got %q", fmt.Sprintf(format, args...), line)
	}
	return line
}

// multi reads the body of a multi-line response, undoing dot-stuffing,
// byte for byte (RFC 1939 §3).
func (c *popConn) multi() []byte {
	c.t.Helper()
	b, err := c.c.Multi()
	if err != nil {
		c.t.Fatalf("reading a multi-line response: %v", err)
	}
	return b
}

func (c *popConn) login(user, pass string) {
	c.t.Helper()
	c.ok("USER %s", user)
	c.ok("PASS %s", pass)
}

// retr returns message n byte for byte.
func (c *popConn) retr(n int) []byte {
	c.t.Helper()
	c.ok("RETR %d", n)
	return c.multi()
}

type listing struct {
	n    int
	size int64
	uidl string
}

// list returns LIST and UIDL together.
func (c *popConn) list() []listing {
	c.t.Helper()
	entries, err := c.c.List()
	if err != nil {
		c.t.Fatal(err)
	}
	out := make([]listing, len(entries))
	for i, e := range entries {
		out[i] = listing{n: e.N, size: e.Size, uidl: e.UIDL}
	}
	return out
}

func (c *popConn) uidls() []string {
	c.t.Helper()
	var u []string
	for _, e := range c.list() {
		u = append(u, e.uidl)
	}
	return u
}

// quit sends QUIT and returns its status line; the server then closes.
func (c *popConn) quit() string {
	c.t.Helper()
	line := c.cmd("QUIT")
	c.c.Timeout = 5 * time.Second
	if _, err := c.c.Drain(); err != nil {
		c.t.Errorf("after QUIT: %v", err)
	}
	return line
}

// drop closes the connection without QUIT.
func (c *popConn) drop() { c.conn.Close() }
