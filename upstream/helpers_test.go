package upstream_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// forEachUpstream runs fn against every upstream of imaptest.Factories
// (the Dovecot one skips itself unless its environment is set).
func forEachUpstream(t *testing.T, fn func(t *testing.T, u *imaptest.Upstream)) {
	t.Helper()
	for _, f := range imaptest.Factories() {
		t.Run(f.Name, func(t *testing.T) {
			fn(t, f.New(t))
		})
	}
}

func config(t testing.TB, addr string) upstream.Config {
	return upstream.Config{
		Address:  addr,
		Security: upstream.SecurityNone,
		Timeout:  10 * time.Second,
		Logger:   zaptest.NewLogger(t),
	}
}

// dial dials u and logs in; the connection is closed when the test ends.
func dial(t testing.TB, u *imaptest.Upstream) *upstream.Conn {
	t.Helper()
	c, err := upstream.Dial(t.Context(), config(t, u.Addr))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(t.Context(), u.User, u.Pass); err != nil {
		t.Fatalf("Login: %v", err)
	}
	return c
}

// open dials u, logs in and selects u's mailbox.
func open(t testing.TB, u *imaptest.Upstream) (*upstream.Conn, upstream.Status) {
	t.Helper()
	c := dial(t, u)
	st, err := c.Select(t.Context(), u.Mailbox)
	if err != nil {
		t.Fatalf("Select %s: %v", u.Mailbox, err)
	}
	return c, st
}

// message returns a small CRLF message with Message-ID <n@test>.
func message(n int, body string) []byte {
	if body == "" {
		body = fmt.Sprintf("This is message %d.\r\n", n)
	}
	return []byte(fmt.Sprintf("From: a@example.com\r\nTo: b@example.com\r\nSubject: test %d\r\nMessage-ID: <%d@test>\r\n\r\n%s", n, n, body))
}

func wantKind(t testing.TB, err error, want upstream.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want kind %v", want)
	}
	if _, ok := err.(*upstream.Error); !ok {
		t.Errorf("error %v is a %T, want *upstream.Error", err, err)
	}
	if got := upstream.KindOf(err); got != want {
		t.Fatalf("kind of %q = %v, want %v", err, got, want)
	}
}

func within(t testing.TB, d time.Duration, what string, fn func()) {
	t.Helper()
	start := time.Now()
	fn()
	if el := time.Since(start); el > d {
		t.Errorf("%s took %v, want under %v", what, el, d)
	}
}

// scriptConn is the server side of a scripted IMAP conversation.
type scriptConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// serveScript listens on 127.0.0.1, accepts one connection and runs fn on
// it in a goroutine; it returns the address. The connection is closed when
// fn returns.
func serveScript(t testing.TB, fn func(s *scriptConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fn(&scriptConn{t: t, c: c, br: bufio.NewReader(c)})
	}()
	return ln.Addr().String()
}

// send writes lines, each ended with CRLF.
func (s *scriptConn) send(lines ...string) {
	for _, l := range lines {
		if _, err := s.c.Write([]byte(l + "\r\n")); err != nil {
			return
		}
	}
}

// read reads one command line and returns its tag, name (upper case, with
// "UID ") and arguments; ok is false at EOF.
func (s *scriptConn) read() (tag, name, args string, ok bool) {
	line, err := s.br.ReadString('\n')
	if err != nil {
		return "", "", "", false
	}
	line = strings.TrimRight(line, "\r\n")
	tag, rest, _ := strings.Cut(line, " ")
	name, args, _ = strings.Cut(rest, " ")
	name = strings.ToUpper(name)
	if name == "UID" {
		var sub string
		sub, args, _ = strings.Cut(args, " ")
		name += " " + strings.ToUpper(sub)
	}
	return tag, name, args, true
}

// expect reads a command and fails the test unless it is name.
func (s *scriptConn) expect(name string) (tag, args string) {
	s.t.Helper()
	tag, got, args, ok := s.read()
	if !ok {
		s.t.Errorf("script: connection ended, want %s", name)
		return "", ""
	}
	if got != name {
		s.t.Errorf("script: got command %s %s, want %s", got, args, name)
	}
	return tag, args
}

// serveLogout answers a LOGOUT if one comes.
func (s *scriptConn) serveLogout() {
	if tag, name, _, ok := s.read(); ok && name == "LOGOUT" {
		s.send("* BYE bye", tag+" OK done")
	}
}

// topRef is what WriteTop must write: the header with its blank line,
// then the body up to and including the LF ending line n.
func topRef(raw []byte, n int) []byte {
	i := bytes.Index(raw, []byte("\r\n\r\n"))
	hdr, body := raw[:i+4], raw[i+4:]
	out := append([]byte{}, hdr...)
	for n > 0 && len(body) > 0 {
		j := bytes.IndexByte(body, '\n')
		if j < 0 {
			out = append(out, body...)
			break
		}
		out = append(out, body[:j+1]...)
		body = body[j+1:]
		n--
	}
	return out
}
