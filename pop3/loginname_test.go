package pop3_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/popbridge/popbridge/pop3"
)

// badLoginNames are names an upstream could read differently from the
// octets popbridge keys its locks, records and limits on: a server that
// stops at a NUL (Dovecot does), trims spaces, drops format characters
// or unquotes.
var badLoginNames = []struct{ why, name string }{
	{"NUL", "alice\x00x"},
	{"CR", "alice\rx"},
	{"LF", "alice\nx"},
	{"TAB", "alice\tx"},
	{"ESC", "alice\x1b[31m"},
	{"DEL", "alice\x7f"},
	{"invalid UTF-8", "alice\xff\xfe"},
	{"C1 control", "alice\u0085"},
	{"zero-width space", "ali\u200bce"},
	{"byte order mark", "\ufeffalice"},
	{"line separator", "alice\u2028"},
	{"no-break space", "alice\u00a0x"},
	{"leading space", " alice"},
	{"trailing space", "alice "},
	{"double quote", `"alice"`},
	{"backslash", `ali\ce`},
	{"too long", strings.Repeat("a", 257)},
	{"empty", ""},
}

// TestLoginNameRefusedEverywhere: every way of naming a user (USER, AUTH
// PLAIN with and without an authorization identity, AUTH LOGIN, XOAUTH2,
// OAUTHBEARER) refuses the same bad names with -ERR [AUTH], before the
// login limiter and the backend hear of them.
func TestLoginNameRefusedEverywhere(t *testing.T) {
	type way struct {
		name   string
		usable func(n string) bool // whether the way can carry n at all
		steps  func(n string) []step
	}
	refused := func(got string) bool { return strings.HasPrefix(got, "-ERR [AUTH] invalid user name") }
	ways := []way{
		{"USER", func(n string) bool {
			// A command line cannot hold NUL, CR, LF; USER takes one word.
			return n != "" && !strings.ContainsAny(n, "\x00\r\n ")
		}, func(n string) []step { return []step{{"USER " + n, nil}} }},
		{"AUTH PLAIN", func(n string) bool { return !strings.Contains(n, "\x00") && n != "" },
			func(n string) []step { return []step{{"AUTH PLAIN " + b64("\x00"+n+"\x00"+testPass), nil}} }},
		{"AUTH PLAIN authzid", func(n string) bool { return !strings.Contains(n, "\x00") && n != "" },
			func(n string) []step { return []step{{"AUTH PLAIN " + b64(n+"\x00"+testUser+"\x00"+testPass), nil}} }},
		{"AUTH LOGIN", func(n string) bool { return n != "" },
			func(n string) []step {
				return []step{{"AUTH LOGIN " + b64(n), ok("+ " + b64("Password:"))}, {b64(testPass), nil}}
			}},
		{"AUTH LOGIN continuation", func(n string) bool { return n != "" },
			func(n string) []step {
				return []step{
					{"AUTH LOGIN", ok("+ " + b64("Username:"))},
					{b64(n), ok("+ " + b64("Password:"))},
					{b64(testPass), nil},
				}
			}},
		{"XOAUTH2", func(n string) bool { return n != "" && !strings.Contains(n, "\x01") },
			func(n string) []step { return []step{{"AUTH XOAUTH2 " + xoauth2(n, testToken), nil}} }},
		{"OAUTHBEARER", func(n string) bool { return n != "" },
			func(n string) []step {
				esc := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(n)
				return []step{{"AUTH OAUTHBEARER " + oauthBearer(esc, testToken), nil}}
			}},
	}
	for _, w := range ways {
		t.Run(w.name, func(t *testing.T) {
			be := newTokenBackend()
			lim := &fakeLoginLimiter{max: 1000}
			srv, logs := observedServer(be, func(s *pop3.Server) {
				s.MaxErrors = 1000
				s.LoginLimiter = lim
			})
			c := pipeSession(t, srv, nil)
			c.expect("greeting", "+OK POP3 server ready")
			tried := 0
			for _, bad := range badLoginNames {
				if !w.usable(bad.name) {
					continue
				}
				tried++
				steps := w.steps(bad.name)
				for i, s := range steps {
					c.send(s.send + "\r\n")
					got := c.line()
					if i < len(steps)-1 {
						if got != s.expect[0] {
							t.Fatalf("%s (%s): %q answered %q, want %q", bad.why, w.name, s.send, got, s.expect[0])
						}
						continue
					}
					if !refused(got) {
						t.Errorf("%s (%s): answered %q, want -ERR [AUTH] invalid user name", bad.why, w.name, got)
					}
				}
			}
			if tried == 0 {
				t.Fatal("no bad name tried")
			}
			// The connection still works for a good name.
			c.run([]step{{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok(maildropLine(defaultMsgs()))}})
			lim.mu.Lock()
			begun := append([]string(nil), lim.begun...)
			lim.mu.Unlock()
			if len(begun) != 1 || begun[0] != "pipe "+testUser {
				t.Errorf("the login limiter saw %q, want only the good login", begun)
			}
			be.mu.Lock()
			logins := append([]string(nil), be.logins...)
			be.mu.Unlock()
			if len(logins) != 1 || logins[0] != testUser {
				t.Errorf("the backend saw logins %q, want only the good one", logins)
			}
			if calls := be.calls(); len(calls) != 0 {
				t.Errorf("the backend saw token logins %q", calls)
			}
			c.close()
			if n := len(logs.FilterMessage("login name refused").All()); n != tried {
				t.Errorf("%d refusals logged, want %d", n, tried)
			}
		})
	}
}

// TestCheckLoginName: the names that pass are the names every upstream
// reads as they are.
func TestCheckLoginName(t *testing.T) {
	for _, good := range []string{"alice", "alice@example.com#phone", "Bob.Smith+tag@example.org", "jürgen@bücher.de", "john smith", strings.Repeat("a", 256)} {
		if err := pop3.CheckLoginName(good); err != nil {
			t.Errorf("CheckLoginName(%q) = %v, want nil", good, err)
		}
	}
	for _, bad := range badLoginNames {
		err := pop3.CheckLoginName(bad.name)
		var pe *pop3.Error
		if err == nil || !errors.As(err, &pe) || pe.Code != pop3.CodeAuth || !strings.HasPrefix(pe.Text, "invalid user name") {
			t.Errorf("CheckLoginName(%s %q) = %v, want an [AUTH] invalid user name error", bad.why, bad.name, err)
		}
	}
}
