package pop3_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/internal/saslmech"
	"github.com/popbridge/popbridge/pop3"
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
// hang, and Commit may only follow a QUIT line (the first invariant of bridge/doc.go).
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
		be := newFakeBackend()
		fuzzSession(t, be, be, input)
	})
}

// saslMechs are the mechanisms FuzzSASL picks from.
var saslMechs = []string{"PLAIN", "LOGIN", saslmech.XOAuth2, saslmech.OAuthBearer}

// FuzzSASL runs an AUTH exchange with arbitrary responses: ir (if not
// empty) is the initial response, cont the response to the first
// challenge, each base64-encoded as a client would, then tail goes out as
// it is (more responses, commands). The session must not panic or hang,
// Commit may only follow a QUIT line, and a token handed to the Backend
// must be a well-formed b64token for a printable user name.
func FuzzSASL(f *testing.F) {
	for _, s := range []struct {
		mech     uint8
		ir, cont string
		tail     string
	}{
		{0, "\x00alice\x00s3cret pass", "", "STAT\r\nDELE 1\r\nQUIT\r\n"},
		{0, "", "alice\x00alice\x00s3cret pass", "RETR 1\r\n"},
		{1, "alice", "s3cret pass", "DELE 2\r\n"},
		{1, "", "alice", "czNjcmV0IHBhc3M=\r\nLIST\r\nQUIT\r\n"},
		{2, "user=alice\x01auth=Bearer " + testToken + "\x01\x01", "", "DELE 1\r\nQUIT\r\n"},
		{2, "user=alice\x01auth=Bearer wrong\x01\x01", "", "\r\nCAPA\r\n"},
		{3, "n,a=alice,\x01host=h\x01port=110\x01auth=Bearer " + testToken + "\x01\x01", "", "UIDL\r\n"},
		{3, "", "n,a=a=2Cb,\x01auth=bearer x=\x01\x01", "AQ==\r\n*\r\n"},
		{3, "y,a=alice,\x01auth=Bearer \x01\x01", "", ""},
		{2, "", "", "*\r\n"},
	} {
		f.Add(s.mech, []byte(s.ir), []byte(s.cont), []byte(s.tail))
	}
	f.Fuzz(func(t *testing.T, mech uint8, ir, cont, tail []byte) {
		var in bytes.Buffer
		in.WriteString("AUTH " + saslMechs[int(mech)%len(saslMechs)])
		if len(ir) > 0 {
			in.WriteString(" " + base64.StdEncoding.EncodeToString(ir))
		}
		in.WriteString("\r\n")
		if len(cont) > 0 || len(ir) == 0 {
			in.WriteString(base64.StdEncoding.EncodeToString(cont) + "\r\n")
		}
		in.Write(tail)
		be := newTokenBackend()
		fuzzSession(t, be.fakeBackend, be, in.Bytes())
		for _, call := range be.calls() {
			mech, rest, _ := strings.Cut(call, " ")
			i := strings.LastIndexByte(rest, ' ')
			user, token := rest[:i], rest[i+1:]
			if mech != saslmech.XOAuth2 && mech != saslmech.OAuthBearer {
				t.Fatalf("LoginToken with mechanism %q", mech)
			}
			if user == "" || strings.ContainsFunc(user, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("LoginToken with user %q", user)
			}
			if strings.TrimRight(strings.TrimRight(token, "="), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/") != "" ||
				strings.TrimRight(token, "=") == "" {
				t.Fatalf("LoginToken with token %q", token)
			}
		}
	})
}

// fuzzSession serves input to srvBackend, be being the fakeBackend that
// opens its maildrops, and checks the invariants.
func fuzzSession(t *testing.T, be *fakeBackend, srvBackend pop3.Backend, input []byte) {
	core, logs := observer.New(zapcore.WarnLevel)
	srv := pop3.NewServer(srvBackend, zap.New(core))
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
		// As the server parses it: the name, then arguments separated by
		// spaces, so "QUIT " is QUIT too.
		if len(l) >= 4 && strings.EqualFold(string(l[:4]), "QUIT") && strings.Trim(string(l[4:]), " ") == "" {
			return true
		}
	}
	return false
}
