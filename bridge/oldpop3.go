package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	gopop3 "github.com/knadh/go-pop3"
)

// OldPOP3 is a read-only session with the POP3 server a site leaves for
// popbridge (import-uidl): it lists UIDL, LIST and the header of every
// message (TOP n 0), and the whole of a message (TOP n with a line count
// larger than any message) where content must tell messages apart. It
// never sends RETR (a server may mark a retrieved message seen) nor DELE,
// so that QUIT changes nothing there.
type OldPOP3 struct {
	conn *gopop3.Conn
	raw  net.Conn // closed by Close whatever QUIT answered
}

// OldPOP3Options say how to reach the old server.
type OldPOP3Options struct {
	// URL is pop3s://host[:port] (implicit TLS, port 995 by default) or
	// pop3://host[:port] (cleartext, port 110; loopback addresses only).
	URL      string
	User     string
	Password string
	// Insecure skips the verification of the server's TLS certificate.
	Insecure bool
	// Timeout bounds dialing and every wait for the server; 0 means 60 s.
	Timeout time.Duration
}

// topAll is the line count of a TOP that returns the whole message.
const topAll = 1 << 30

// DialOldPOP3 connects and logs in to the old POP3 server.
func DialOldPOP3(ctx context.Context, o OldPOP3Options) (*OldPOP3, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, fmt.Errorf("old server URL: %w", err)
	}
	var useTLS bool
	port := ""
	switch u.Scheme {
	case "pop3s":
		useTLS, port = true, "995"
	case "pop3":
		port = "110"
	default:
		return nil, fmt.Errorf("old server URL %q: want pop3s://host[:port] (or pop3:// to a loopback address)", o.URL)
	}
	if u.Port() != "" {
		port = u.Port()
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("old server URL %q: no host", o.URL)
	}
	addr := net.JoinHostPort(host, port)
	if !useTLS && !loopbackAddr(addr) {
		return nil, fmt.Errorf("old server URL %q: pop3:// (cleartext) is only allowed to a loopback address; use pop3s://", o.URL)
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	d := &oldDialer{ctx: ctx, timeout: timeout}
	if useTLS {
		d.tls = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host, InsecureSkipVerify: o.Insecure}
	}
	p, _ := strconv.Atoi(port)
	c, err := gopop3.New(gopop3.Opt{Host: host, Port: p, DialTimeout: timeout, Dialer: d}).NewConn()
	if err != nil {
		if d.conn != nil {
			d.conn.Close()
		}
		return nil, fmt.Errorf("connecting to the old server %s: %w", addr, err)
	}
	old := &OldPOP3{conn: c, raw: d.conn}
	if err := c.Auth(o.User, o.Password); err != nil {
		old.Close()
		return nil, fmt.Errorf("logging in to the old server as %s: %w", o.User, err)
	}
	return old, nil
}

// Close ends the session with QUIT (nothing was deleted, so the server's
// UPDATE state changes nothing) and closes the connection.
func (o *OldPOP3) Close() error {
	err := o.conn.Quit()
	o.raw.Close()
	return err
}

// Messages lists the maildrop: UIDL, LIST and TOP n 0 of every message.
func (o *OldPOP3) Messages(ctx context.Context) ([]OldMessage, error) {
	uidls, err := o.conn.Cmd("UIDL", true)
	if err != nil {
		return nil, fmt.Errorf("old server UIDL: %w", err)
	}
	sizes, err := o.conn.Cmd("LIST", true)
	if err != nil {
		return nil, fmt.Errorf("old server LIST: %w", err)
	}
	byNum := map[int]*OldMessage{}
	var msgs []*OldMessage
	for _, l := range bytes.Split(uidls.Bytes(), []byte("\r\n")) {
		f := bytes.Fields(l)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.Atoi(string(f[0]))
		if err != nil || len(f) != 2 || n <= 0 || byNum[n] != nil {
			return nil, fmt.Errorf("old server UIDL: malformed line %q", truncateBytes(l, 100))
		}
		m := &OldMessage{Num: n, UIDL: string(f[1]), Size: -1}
		byNum[n] = m
		msgs = append(msgs, m)
	}
	for _, l := range bytes.Split(sizes.Bytes(), []byte("\r\n")) {
		f := bytes.Fields(l)
		if len(f) == 0 {
			continue
		}
		n, err1 := strconv.Atoi(string(f[0]))
		size, err2 := strconv.ParseInt(string(f[1%len(f)]), 10, 64)
		if err1 != nil || err2 != nil || len(f) < 2 {
			return nil, fmt.Errorf("old server LIST: malformed line %q", truncateBytes(l, 100))
		}
		if m := byNum[n]; m != nil {
			m.Size = size
		}
	}
	out := make([]OldMessage, 0, len(msgs))
	for _, m := range msgs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if m.Size < 0 {
			return nil, fmt.Errorf("old server: message %d is in UIDL but not in LIST", m.Num)
		}
		top, err := o.conn.Cmd("TOP", true, m.Num, 0)
		if err != nil {
			return nil, fmt.Errorf("old server TOP %d 0: %w", m.Num, err)
		}
		m.Header, _ = unstuff(top.Bytes())
		out = append(out, *m)
	}
	return out, nil
}

// Digest returns the SHA-256 of message num as the old server sends it
// (dot-stuffing undone, line ends CRLF: see contentDigest). ok is false
// when the client library may have altered the content (a line of 4096
// octets or more comes back split), so that it cannot be compared.
func (o *OldPOP3) Digest(ctx context.Context, num int) (sum [32]byte, ok bool, err error) {
	if err := ctx.Err(); err != nil {
		return sum, false, err
	}
	b, err := o.conn.Cmd("TOP", true, num, topAll)
	if err != nil {
		return sum, false, fmt.Errorf("old server TOP %d: %w", num, err)
	}
	body, long := unstuff(b.Bytes())
	if long {
		return sum, false, nil
	}
	return sha256.Sum256(body), true, nil
}

// unstuff undoes the dot-stuffing of a multi-line response whose lines
// end in CRLF (go-pop3 leaves it), and reports whether a line was long
// enough (4095 octets or more) that go-pop3 may have split it.
func unstuff(b []byte) (out []byte, long bool) {
	out = make([]byte, 0, len(b))
	for len(b) > 0 {
		i := bytes.Index(b, []byte("\r\n"))
		var line []byte
		if i < 0 {
			line, b = b, nil
		} else {
			line, b = b[:i+2], b[i+2:]
		}
		if len(line) >= 4095+2 {
			long = true
		}
		if bytes.HasPrefix(line, []byte("..")) {
			line = line[1:]
		}
		out = append(out, line...)
	}
	return out, long
}

func truncateBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// oldDialer dials the old server under ctx, with TLS when tls is set, and
// bounds every read and write by timeout (go-pop3 sets no deadlines).
type oldDialer struct {
	ctx     context.Context
	timeout time.Duration
	tls     *tls.Config
	conn    net.Conn
}

func (d *oldDialer) Dial(network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.timeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	var c net.Conn = raw
	if d.tls != nil {
		tc := tls.Client(raw, d.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS: %w", err)
		}
		c = tc
	}
	d.conn = &deadlineConn{Conn: c, timeout: d.timeout, ctx: d.ctx}
	return d.conn, nil
}

// deadlineConn sets a fresh deadline before every read and write, and
// fails once ctx has ended.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	ctx     context.Context
}

var errOldAborted = errors.New("import aborted")

func (c *deadlineConn) Read(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, errOldAborted
	}
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, errOldAborted
	}
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(p)
}
