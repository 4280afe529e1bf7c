package pop3_test

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popbridge/popbridge/bridge/pop3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Session prefixes the fuzzer's input is appended to, by mode.
var fuzzPrefixes = []string{
	"", // AUTHORIZATION
	"USER " + testUser + "\r\nPASS " + testPass + "\r\n",                     // TRANSACTION
	"USER " + testUser + "\r\nPASS " + testPass + "\r\nDELE 1\r\nDELE 3\r\n", // TRANSACTION with marks
}

// idleConn is the server's end of the pipe. It reports when the server
// reads again after consuming all input: from then on it would wait for
// the client.
type idleConn struct {
	net.Conn
	total    int64
	consumed atomic.Int64
	once     sync.Once
	idle     chan struct{}
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.consumed.Load() >= c.total {
		c.once.Do(func() { close(c.idle) })
	}
	n, err := c.Conn.Read(p)
	c.consumed.Add(int64(n))
	return n, err
}

// FuzzSession feeds arbitrary client input in AUTHORIZATION and after a
// login (with and without DELE marks). The session must not panic or
// hang, and Commit may only follow a QUIT line (DESIGN.md invariant 1).
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"CAPA\r\nQUIT\r\n",
		"USER alice\r\nPASS s3cret pass\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 2 1\r\nDELE 2\r\nQUIT\r\n",
		"AUTH PLAIN\r\nAGFsaWNlAHMzY3JldCBwYXNz\r\nRETR 2\r\nQUIT\r\n",
		"AUTH LOGIN YWxpY2U=\r\nczNjcmV0IHBhc3M=\r\nRSET\r\nquit\n",
		"LIST 1 2\r\nLIST 99999999999999999999\r\nTOP 1 -1\r\nNOOP\r\nRSET\r\n",
		"DELE 1\r\nRETR 1\r\nTOP 1 0\r\nLIST 1\r\nUIDL 1\r\nRSET\r\nRETR 1\r\n",
		"STLS\r\nUSER x\r\nPASS\r\nAUTH\r\nAUTH PLAIN =\r\n*\r\n",
		"\x00\r\n\r\n" + strings.Repeat("x", 700) + "\r\nQUIT\r\n",
	} {
		for mode := range fuzzPrefixes {
			f.Add([]byte(s), uint8(mode))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		input := append([]byte(fuzzPrefixes[int(mode)%len(fuzzPrefixes)]), data...)
		fuzzSession(t, input)
	})
}

func fuzzSession(t *testing.T, input []byte) {
	core, logs := observer.New(zapcore.WarnLevel)
	be := newFakeBackend()
	srv := pop3.NewServer(be, zap.New(core))
	srv.AllowInsecureAuth = true
	srv.LoginFailDelay = 0
	srv.MaxErrors = 1 << 20
	srv.AuthTimeout, srv.ReadTimeout, srv.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second

	cc, sc := net.Pipe()
	ic := &idleConn{Conn: sc, total: int64(len(input)), idle: make(chan struct{})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.ServeConn(ic)
	}()
	go io.Copy(io.Discard, cc) // answers are checked by the scripted tests
	cc.SetDeadline(time.Now().Add(10 * time.Second))
	go cc.Write(input)

	select {
	case <-ic.idle:
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("session hangs")
	}
	cc.Close()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("session does not end after the client left")
	}

	for _, e := range logs.All() {
		if strings.Contains(e.Message, "panic") {
			t.Fatalf("%s: %v", e.Message, e.ContextMap())
		}
	}
	be.mu.Lock()
	drops := be.drops
	be.mu.Unlock()
	quit := hasQuitLine(input)
	for _, d := range drops {
		commits, closes, after := d.calls()
		if closes != 1 || after {
			t.Fatalf("Close called %d times, calls after Close %v", closes, after)
		}
		if len(commits) > 1 || len(commits) == 1 && !quit {
			t.Fatalf("Commit %v without a QUIT line", commits)
		}
		for _, c := range commits {
			for i, n := range c {
				if n < 1 || n > len(d.msgs) || i > 0 && c[i-1] >= n {
					t.Fatalf("Commit %v: not ascending message numbers", c)
				}
			}
		}
	}
}

// hasQuitLine reports whether input holds a QUIT command line.
func hasQuitLine(input []byte) bool {
	for _, l := range bytes.Split(input, []byte("\n")) {
		l = bytes.TrimSuffix(l, []byte("\r"))
		if strings.EqualFold(string(l), "QUIT") {
			return true
		}
	}
	return false
}
