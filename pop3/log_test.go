package pop3_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/pop3"
)

// observedServer returns a server logging at Debug level to an observer.
func observedServer(be pop3.Backend, opts ...func(*pop3.Server)) (*pop3.Server, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	srv := pop3.NewServer(be, zap.New(core))
	srv.AllowInsecureAuth, srv.LoginFailDelay = true, 0
	for _, o := range opts {
		o(srv)
	}
	return srv, logs
}

// sessionLine returns the fields of the only "session" log entry.
func sessionLine(t *testing.T, logs *observer.ObservedLogs) map[string]any {
	t.Helper()
	s := logs.FilterMessage("session").All()
	if len(s) != 1 {
		t.Fatalf("%d session lines, want 1", len(s))
	}
	if s[0].Level != zapcore.InfoLevel {
		t.Errorf("session line at %v", s[0].Level)
	}
	return s[0].ContextMap()
}

// noSecrets fails if any log entry holds one of secrets.
func noSecrets(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, e := range logs.All() {
		text := fmt.Sprint(e.Message, e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("log entry %q holds a secret: %s", e.Message, text)
			}
		}
	}
}

func TestSessionLog(t *testing.T) {
	be := newFakeBackend()
	srv, logs := observedServer(be)
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS not-" + testPass, ok("-ERR [AUTH] authentication failed")},
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok(maildropLine(defaultMsgs()))},
		{"RETR 1", nil},
	})
	for c.line() != "." {
	}
	c.run([]step{
		{"TOP 2 0", ok("+OK top of message follows", "Subject: two", "", ".")},
		{"DELE 2", ok("+OK message 2 deleted")},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.wait()
	f := sessionLine(t, logs)
	want := map[string]any{
		"user":      testUser,
		"account":   testUser + "@example.org",
		"remote":    "pipe",
		"tls":       false,
		"retr":      int64(1),
		"top":       int64(1),
		"dele":      int64(1),
		"bytes_out": int64(len(msg1) + len("Subject: two\r\n\r\n")),
		"outcome":   "quit",
	}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("%s = %#v, want %#v", k, f[k], v)
		}
	}
	if id, _ := f["session"].(string); len(id) != 12 {
		t.Errorf("session id %q", f["session"])
	}
	if _, ok := f["duration"].(time.Duration); !ok {
		t.Errorf("duration = %#v", f["duration"])
	}
	noSecrets(t, logs, testPass, "s3cret", b64("\x00"+testUser+"\x00"+testPass))
}

func TestSessionOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    func(*pop3.Server)
		script  func(c *client)
		outcome string
	}{
		{"auth-failed", nil, func(c *client) {
			c.expect("greeting", "+OK POP3 server ready")
			c.run([]step{
				{"USER " + testUser, ok("+OK send PASS")},
				{"PASS wrong " + testPass, ok("-ERR [AUTH] authentication failed")},
				{"AUTH LOGIN", ok("+ " + b64("Username:"))},
				{b64(testUser), ok("+ " + b64("Password:"))},
				{b64("wrong" + testPass), ok("-ERR [AUTH] authentication failed")},
				{"QUIT", ok("+OK POP3 server signing off")},
			})
		}, "auth-failed"},
		{"dropped", nil, func(c *client) {
			c.login()
			c.nc.Close()
		}, "dropped"},
		{"timeout", func(s *pop3.Server) { s.ReadTimeout = 20 * time.Millisecond }, func(c *client) {
			c.login()
			c.expectClosed() // autologout sends nothing (RFC 1939 §3)
		}, "timeout"},
		{"too-many-errors", func(s *pop3.Server) { s.MaxErrors = 1 }, func(c *client) {
			c.expect("greeting", "+OK POP3 server ready")
			c.run([]step{{"CAPA", capaAuth}, {"STAT", ok("-ERR command not valid in this state", "-ERR too many errors")}})
		}, "too-many-errors"},
		{"quit-failed", nil, func(c *client) {
			c.login()
			c.run([]step{{"QUIT", ok("-ERR [SYS/TEMP] internal error, try again later")}})
		}, "quit-failed"},
		{"closed", nil, func(c *client) {
			c.expect("greeting", "+OK POP3 server ready")
			c.run([]step{{"EHLO example.org", ok("-ERR unknown command")}})
		}, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newFakeBackend()
			if tc.outcome == "quit-failed" {
				be.commitErr = fmt.Errorf("upstream gone")
			}
			opts := []func(*pop3.Server){}
			if tc.opts != nil {
				opts = append(opts, tc.opts)
			}
			srv, logs := observedServer(be, opts...)
			c := pipeSession(t, srv, nil)
			tc.script(c)
			c.close()
			if got := sessionLine(t, logs)["outcome"]; got != tc.outcome {
				t.Errorf("outcome %v, want %s", got, tc.outcome)
			}
			noSecrets(t, logs, testPass, b64(testUser), b64("wrong"+testPass))
		})
	}
}
