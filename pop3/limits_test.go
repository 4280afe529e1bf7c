package pop3_test

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/popbridge/popbridge/pop3"
)

// fakeConnLimiter admits up to max connections at a time.
type fakeConnLimiter struct {
	mu       sync.Mutex
	max      int
	open     int
	released int
	remotes  []string
	err      error // returned when full; nil means a *pop3.Error
}

func (l *fakeConnLimiter) AcquireConn(remote net.Addr) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.remotes = append(l.remotes, remote.String())
	if l.open >= l.max {
		if l.err != nil {
			return nil, l.err
		}
		return nil, &pop3.Error{Code: pop3.CodeSysTemp, Text: "too many connections"}
	}
	l.open++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.open--
			l.released++
		})
	}, nil
}

func (l *fakeConnLimiter) counts() (open, released int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.released
}

func TestConnLimiter(t *testing.T) {
	lim := &fakeConnLimiter{max: 1}
	be := newFakeBackend()
	srv, logs := observedServer(be, func(s *pop3.Server) { s.ConnLimiter = lim })
	first := pipeSession(t, srv, nil)
	first.expect("greeting", "+OK POP3 server ready")

	second := pipeSession(t, srv, nil)
	second.expect("refused", "-ERR [SYS/TEMP] too many connections")
	second.expectClosed()
	second.wait()

	lim.err = errors.New("internal detail")
	third := pipeSession(t, srv, nil)
	third.expect("refused", "-ERR [SYS/TEMP] server busy, try again later")
	third.expectClosed()
	third.wait()

	first.run([]step{{"QUIT", ok("+OK POP3 server signing off")}})
	first.wait()
	if open, released := lim.counts(); open != 0 || released != 1 {
		t.Errorf("open %d, released %d; want 0, 1", open, released)
	}
	var refused []string
	for _, e := range logs.FilterMessage("session").All() {
		f := e.ContextMap()
		if f["outcome"] == "refused" {
			refused = append(refused, f["reason"].(string))
			if f["remote"] != "pipe" {
				t.Errorf("refusal logged without the remote address: %v", f)
			}
		}
	}
	if len(refused) != 2 || refused[0] != "[SYS/TEMP] too many connections" || refused[1] != "internal detail" {
		t.Errorf("refusals logged: %q", refused)
	}
}

func TestConnLimiterImplicitTLS(t *testing.T) {
	cert, pool := testCert(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	lim := &fakeConnLimiter{max: 0}
	srv := newServer(t, newFakeBackend(), func(s *pop3.Server) { s.ConnLimiter = lim })
	c := pipeSession(t, srv, func(nc net.Conn) net.Conn { return tls.Server(nc, cfg) })
	c.startTLS(pool) // the refusal is sent over TLS, where the client reads it
	c.expect("refused", "-ERR [SYS/TEMP] too many connections")
	c.expectClosed()
	c.wait()
}

// slowAddrConn blocks in RemoteAddr until released, like a connection
// behind the PROXY protocol whose header is late.
type slowAddrConn struct {
	net.Conn
	release chan struct{}
}

func (c *slowAddrConn) RemoteAddr() net.Addr {
	<-c.release
	return c.Conn.RemoteAddr()
}

type slowFirstListener struct {
	net.Listener
	once    sync.Once
	release chan struct{}
}

func (l *slowFirstListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	slow := false
	l.once.Do(func() { slow = true })
	if slow {
		return &slowAddrConn{Conn: nc, release: l.release}, nil
	}
	return nc, nil
}

// A connection whose address takes long to learn holds up no other.
func TestRemoteAddrOutsideAcceptLoop(t *testing.T) {
	srv := newServer(t, newFakeBackend())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := &slowFirstListener{Listener: ln, release: make(chan struct{})}
	go srv.Serve(sl)
	t.Cleanup(func() { srv.Close() })
	slow := dialSession(t, ln.Addr().String())
	fast := dialSession(t, ln.Addr().String())
	fast.expect("greeting", "+OK POP3 server ready")
	close(sl.release)
	slow.expect("greeting", "+OK POP3 server ready")
}

// fakeLoginLimiter refuses after max failures and records each call.
type fakeLoginLimiter struct {
	mu       sync.Mutex
	max      int
	failures int
	begun    []string
	ended    []bool
}

func (l *fakeLoginLimiter) BeginLogin(remote net.Addr, user string) (func(bool) time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.begun = append(l.begun, remote.String()+" "+user)
	if l.failures >= l.max {
		return nil, &pop3.Error{Code: pop3.CodeLoginDelay, Text: "too many failed logins, try again later"}
	}
	return func(failed bool) time.Duration {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.ended = append(l.ended, failed)
		if failed {
			l.failures++
		}
		return 0
	}, nil
}

func TestLoginLimiter(t *testing.T) {
	lim := &fakeLoginLimiter{max: 2}
	be := newTokenBackend()
	be.loginErr = nil
	srv, logs := observedServer(be, manyErrors, func(s *pop3.Server) {
		s.LoginLimiter = lim
		s.LoginFailDelay = time.Hour // not used with a limiter
	})
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	delay := ok("-ERR [LOGIN-DELAY] too many failed logins, try again later")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS wrong", ok("-ERR [AUTH] authentication failed")},
		{"AUTH XOAUTH2 " + xoauth2(testUser, "bad"), ok("+ " + b64(`{"status":"401","schemes":"bearer"}`))},
		{"", ok("-ERR [AUTH] authentication failed")},
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, delay}, // even the right password
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), delay},
		{"AUTH XOAUTH2 " + xoauth2(testUser, testToken), delay},
	})
	lim.mu.Lock()
	lim.max = 10
	lim.mu.Unlock()
	c.run([]step{
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok(maildropLine(defaultMsgs()))},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.wait()
	lim.mu.Lock()
	defer lim.mu.Unlock()
	if len(lim.begun) != 6 || lim.begun[0] != "pipe alice" {
		t.Errorf("BeginLogin calls: %q", lim.begun)
	}
	if want := []bool{true, true, false}; len(lim.ended) != 3 || lim.ended[0] != want[0] || lim.ended[1] != want[1] || lim.ended[2] != want[2] {
		t.Errorf("end calls: %v, want %v", lim.ended, want)
	}
	if n := len(be.logins); n != 2 { // PASS wrong, the last AUTH PLAIN
		t.Errorf("Backend.Login called %d times, want 2", n)
	}
	refusals := logs.FilterMessage("login throttled").All()
	if len(refusals) != 3 {
		t.Fatalf("%d refusals logged, want 3", len(refusals))
	}
	for _, e := range refusals {
		f := e.ContextMap()
		if f["remote"] != "pipe" || f["user"] != testUser || f["reason"] != "[LOGIN-DELAY] too many failed logins, try again later" {
			t.Errorf("refusal logged as %v", f)
		}
	}
	noSecrets(t, logs, testPass, testToken)
}

// A failure that is not about the credentials (the upstream is down) is
// reported to the limiter as not failed, and waits no delay.
func TestLoginLimiterTemporaryFailure(t *testing.T) {
	lim := &fakeLoginLimiter{max: 1}
	be := newFakeBackend()
	be.loginErr = &pop3.Error{Code: pop3.CodeSysTemp, Text: "upstream down"}
	c := pipeSession(t, newServer(t, be, func(s *pop3.Server) { s.LoginLimiter = lim }), nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok("-ERR [SYS/TEMP] upstream down")},
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok("-ERR [SYS/TEMP] upstream down")},
	})
	lim.mu.Lock()
	defer lim.mu.Unlock()
	if len(lim.ended) != 2 || lim.ended[0] || lim.ended[1] {
		t.Errorf("end calls: %v, want [false false]", lim.ended)
	}
}
