package bridge

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// popConn is a byte-exact POP3 client for tests: unlike knadh/go-pop3 it
// keeps long lines whole, keeps bare CRs and LFs as they came, and undoes
// dot-stuffing itself.
type popConn struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialPOP(t testing.TB, addr string) *popConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := &popConn{t: t, conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	t.Cleanup(func() { conn.Close() })
	if line := c.line(); !strings.HasPrefix(line, "+OK") {
		t.Fatalf("greeting %q", line)
	}
	return c
}

// line reads one response line without its CRLF.
func (c *popConn) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading a response: %v (got %q)", err, s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// cmd sends a command and returns the status line.
func (c *popConn) cmd(format string, args ...any) string {
	c.t.Helper()
	c.send(format, args...)
	return c.line()
}

func (c *popConn) send(format string, args ...any) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, format+"\r\n", args...); err != nil {
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
	b, err := readDotBody(c.r, func() { c.conn.SetReadDeadline(time.Now().Add(30 * time.Second)) })
	if err != nil {
		c.t.Fatalf("reading a multi-line response: %v", err)
	}
	return b
}

// readDotBody reads up to the terminating ".CRLF" and returns the unstuffed
// bytes before it. It fails when the stream ends without the terminator.
func readDotBody(r *bufio.Reader, beforeRead func()) ([]byte, error) {
	var out bytes.Buffer
	for {
		beforeRead()
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer: not a terminator; keep it.
			if line[0] == '.' {
				line = line[1:]
			}
			out.Write(line)
			for err == bufio.ErrBufferFull {
				line, err = r.ReadSlice('\n')
				out.Write(line)
			}
			if err != nil {
				return out.Bytes(), err
			}
			continue
		}
		if err != nil {
			return out.Bytes(), err
		}
		if string(line) == ".\r\n" {
			return out.Bytes(), nil
		}
		if line[0] == '.' {
			line = line[1:]
		}
		out.Write(line)
	}
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
	c.ok("LIST")
	var out []listing
	for _, l := range strings.Split(strings.TrimSuffix(string(c.multi()), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		var e listing
		if _, err := fmt.Sscanf(l, "%d %d", &e.n, &e.size); err != nil {
			c.t.Fatalf("LIST line %q: %v", l, err)
		}
		out = append(out, e)
	}
	c.ok("UIDL")
	i := 0
	for _, l := range strings.Split(strings.TrimSuffix(string(c.multi()), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		n, _ := strconv.Atoi(f[0])
		if i >= len(out) || out[i].n != n {
			c.t.Fatalf("UIDL line %q does not match LIST", l)
		}
		out[i].uidl = f[1]
		i++
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
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c.r); err != nil {
		c.t.Errorf("after QUIT: %v", err)
	}
	return line
}

// drop closes the connection without QUIT.
func (c *popConn) drop() { c.conn.Close() }
