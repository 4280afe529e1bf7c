package pop3_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/pop3"
)

const (
	testUser = "alice"
	testPass = "s3cret pass" // with a space: PASS takes the rest of the line
)

// Ways a fake message fails in Retr and Top.
const (
	failNone   = ""
	failBefore = "before" // a plain error before writing anything
	failGone   = "gone"   // a *pop3.Error before writing anything
	failMidway = "midway" // an error after writing part of the message
	failPanic  = "panic"  // a panic in the backend
)

type fakeMsg struct {
	body string
	uidl string
	fail string
}

// Messages served by default: dot-stuffing, a missing final CRLF, bare LF.
var (
	msg1 = "From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dotted line\r\n..two dots\r\n.\r\nend\r\n"
	msg2 = "Subject: two\r\n\r\nline1\r\nline2\r\nline3\r\nline4\r\nno final crlf"
	msg3 = "Subject: three\r\n\r\nbare\nlf\n"
)

func defaultMsgs() []fakeMsg {
	return []fakeMsg{{msg1, "uidl-1", ""}, {msg2, "uidl-2", ""}, {msg3, "uidl-3", ""}}
}

// fakeBackend accepts testUser/testPass and records what the server does.
type fakeBackend struct {
	mu        sync.Mutex
	msgs      []fakeMsg
	chunk     int   // if > 0, Retr and Top write in pieces of this size
	loginErr  error // returned by every Login
	commitErr error // returned by every Commit
	// commitHook, if set, runs inside Commit with its context.
	commitHook func(ctx context.Context)
	logins     []string
	drops      []*fakeDrop
	tls        []bool // per Login: ConnInfo.TLS != nil
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{msgs: defaultMsgs()}
}

func (b *fakeBackend) Login(ctx context.Context, ci *pop3.ConnInfo, user, pass string) (pop3.Maildrop, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logins = append(b.logins, user)
	b.tls = append(b.tls, ci.TLS != nil)
	if b.loginErr != nil {
		return nil, b.loginErr
	}
	if ci.ID == "" || user != testUser || pass != testPass {
		return nil, pop3.ErrAuthFailed
	}
	d := &fakeDrop{be: b, msgs: b.msgs}
	b.drops = append(b.drops, d)
	return d, nil
}

func (b *fakeBackend) LogFields(user string) []zap.Field {
	return []zap.Field{zap.String("account", user+"@example.org")}
}

// drop returns the single maildrop opened so far.
func (b *fakeBackend) drop(t testing.TB) *fakeDrop {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.drops) != 1 {
		t.Fatalf("%d maildrops opened, want 1", len(b.drops))
	}
	return b.drops[0]
}

func (b *fakeBackend) numDrops() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.drops)
}

type fakeDrop struct {
	be   *fakeBackend
	msgs []fakeMsg

	mu         sync.Mutex
	commits    [][]int
	closes     int
	commitCtx  error // ctx.Err() at the end of the last Commit
	afterClose bool  // a method was called after Close
}

func (d *fakeDrop) List() []pop3.Message {
	var l []pop3.Message
	for _, m := range d.msgs {
		l = append(l, pop3.Message{Size: int64(len(m.body)), UIDL: m.uidl})
	}
	return l
}

func (d *fakeDrop) write(w io.Writer, s string) error {
	n := d.be.chunk
	if n <= 0 {
		n = len(s)
	}
	for len(s) > 0 {
		k := min(n, len(s))
		if _, err := io.WriteString(w, s[:k]); err != nil {
			return err
		}
		s = s[k:]
	}
	return nil
}

func (d *fakeDrop) serve(n int, w io.Writer, part func(string) string) error {
	d.check()
	m := d.msgs[n-1]
	switch m.fail {
	case failBefore:
		return errors.New("upstream 10.9.8.7:993: connection reset")
	case failGone:
		return &pop3.Error{Text: "message no longer exists", Err: errors.New("UID 42 vanished")}
	case failMidway:
		if err := d.write(w, m.body[:len(m.body)/2]); err != nil {
			return err
		}
		return errors.New("upstream read timeout")
	case failPanic:
		panic("fake backend panic")
	}
	return d.write(w, part(m.body))
}

func (d *fakeDrop) Retr(ctx context.Context, n int, w pop3.MessageWriter) error {
	return d.serve(n, w, func(s string) string { return s })
}

func (d *fakeDrop) Top(ctx context.Context, n, lines int, w pop3.MessageWriter) error {
	return d.serve(n, w, func(s string) string {
		head, body, found := strings.Cut(s, "\r\n\r\n")
		if !found {
			return s
		}
		out := head + "\r\n\r\n"
		for _, l := range strings.SplitAfter(body, "\n") {
			if lines == 0 {
				break
			}
			out += l
			lines--
		}
		return out
	})
}

func (d *fakeDrop) Commit(ctx context.Context, deleted []int) error {
	d.check()
	if d.be.commitHook != nil {
		d.be.commitHook(ctx)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if deleted == nil {
		deleted = []int{-1} // a nil slice is a bug: make it show
	}
	d.commits = append(d.commits, deleted)
	d.commitCtx = ctx.Err()
	return d.be.commitErr
}

func (d *fakeDrop) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closes++
	return nil
}

func (d *fakeDrop) check() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closes > 0 {
		d.afterClose = true
	}
}

// calls returns the Commit calls and the number of Close calls.
func (d *fakeDrop) calls() ([][]int, int, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.commits, d.closes, d.afterClose
}

// newServer returns a server for be with cleartext login allowed and no
// login delay, logging to t.
func newServer(t testing.TB, be pop3.Backend, opts ...func(*pop3.Server)) *pop3.Server {
	srv := pop3.NewServer(be, zaptest.NewLogger(t))
	srv.AllowInsecureAuth = true
	srv.LoginFailDelay = 0
	for _, o := range opts {
		o(srv)
	}
	// Registered first, so run last: wait for every session handler, which
	// logs to t, before the test counts as done.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

// client is the test side of a session.
type client struct {
	t    testing.TB
	nc   net.Conn
	r    *bufio.Reader
	done chan struct{} // closed when the server side returned
}

// countingConn counts the writes of the server.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// pipeSession serves one session over net.Pipe; wrap, if set, wraps the
// server's end.
func pipeSession(t testing.TB, srv *pop3.Server, wrap func(net.Conn) net.Conn) *client {
	cc, sc := net.Pipe()
	if wrap != nil {
		sc = wrap(sc)
	}
	c := &client{t: t, nc: cc, r: bufio.NewReader(cc), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		srv.ServeConn(sc)
	}()
	t.Cleanup(c.close)
	return c
}

// dialSession connects to addr over TCP.
func dialSession(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, nc: nc, r: bufio.NewReader(nc)}
	t.Cleanup(func() { nc.Close() })
	return c
}

// close closes the client end and waits for the server side to return.
func (c *client) close() {
	c.nc.Close()
	if c.done == nil {
		return
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.t.Error("server session did not end")
	}
}

// wait waits for the server side to return.
func (c *client) wait() {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.t.Fatal("server session did not end")
	}
}

// send writes raw octets.
func (c *client) send(s string) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// line reads one response line, which must end in CRLF.
func (c *client) line() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (after %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads len(want) lines and compares them.
func (c *client) expect(cmd string, want ...string) {
	c.t.Helper()
	for i, w := range want {
		if got := c.line(); got != w {
			c.t.Fatalf("%q: line %d = %q, want %q", cmd, i, got, w)
		}
	}
}

// expectClosed reads to the end and fails if anything more arrives.
func (c *client) expectClosed() {
	c.t.Helper()
	if rest := c.rest(); rest != "" {
		c.t.Fatalf("unexpected data before close: %q", rest)
	}
}

// rest reads everything until the server closes the connection.
func (c *client) rest() string {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection not closed; read %q", b)
	}
	return string(b)
}

// step is one command and the lines expected in answer.
type step struct {
	send   string // a command line, without CRLF
	expect []string
}

func (c *client) run(steps []step) {
	c.t.Helper()
	for _, s := range steps {
		c.send(s.send + "\r\n")
		c.expect(s.send, s.expect...)
	}
}

func ok(lines ...string) []string { return lines }

// login greets and logs in with USER/PASS.
func (c *client) login() {
	c.t.Helper()
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(defaultMsgs()))},
	})
}

func maildropLine(msgs []fakeMsg) string {
	total := 0
	for _, m := range msgs {
		total += len(m.body)
	}
	return "+OK maildrop has " + itoa(len(msgs)) + " messages (" + itoa(total) + " octets)"
}
