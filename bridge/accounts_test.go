package bridge

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// TestLoginNameCannotSplitAnAccount: a name the upstream reads only up to
// a NUL ("alice\0x" logs in as alice on Dovecot) is refused before the
// limiter, the lock and the upstream, so it can neither open a maildrop a
// session already holds nor get round an account's failure limit.
func TestLoginNameCannotSplitAnAccount(t *testing.T) {
	run := func(t *testing.T, addr, user, pass string) {
		cfg := secConfig(addr)
		cfg.Limits.MaxLoginFailuresPerAccount = 2
		s := startSec(t, cfg)
		try := func(how, name, pw string) string {
			t.Helper()
			p, err := dialLogin(s.addr, "")
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			var r string
			if how == "AUTH LOGIN" {
				r, err = p.authLogin(name, pw)
			} else {
				r, err = p.userPass(name, pw)
			}
			return answerOf(r, err)
		}
		invalid := "-ERR [AUTH] invalid user name"

		// One session holds user#phone; names that the upstream reads as
		// user must not open the same maildrop beside it.
		held := mustLogin(t, s.addr, user+"#phone", pass)
		for _, name := range []string{user + "\x00x#phone", user + "\x00y#phone", user + "\x00"} {
			if r := try("AUTH LOGIN", name, pass); !strings.HasPrefix(r, invalid) {
				t.Errorf("AUTH LOGIN %q while %s#phone is open: %q, want %s", name, user, r, invalid)
			}
		}
		if r, err := held.cmd("QUIT"); err != nil || !strings.HasPrefix(r, "+OK") {
			t.Fatalf("QUIT: %q %v", r, err)
		}

		// Two failures lock the account out; a NUL variant must not let
		// the right password in beside the lock-out.
		for range 2 {
			if r := try("USER", user, "wrong-password"); r != "-ERR [AUTH] authentication failed" {
				t.Fatalf("wrong password: %q", r)
			}
		}
		if r := try("USER", user, pass); !strings.HasPrefix(r, "-ERR [LOGIN-DELAY]") {
			t.Errorf("right password after the limit: %q, want [LOGIN-DELAY]", r)
		}
		for _, name := range []string{user + "\x00q", user + "\x00q#laptop"} {
			if r := try("AUTH LOGIN", name, pass); !strings.HasPrefix(r, invalid) {
				t.Errorf("AUTH LOGIN %q with the account locked out: %q, want %s", name, r, invalid)
			}
		}
	}
	t.Run("memserver", func(t *testing.T) {
		up := startUsersUpstream(t, true, "alice@example.org")
		run(t, up.addr, "alice@example.org", usersPassword)
		for _, l := range up.Logins() {
			if strings.ContainsRune(l, 0) {
				t.Errorf("the upstream got LOGIN %q", l)
			}
		}
	})
	t.Run("dovecot", func(t *testing.T) {
		addr, domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR"), os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
		if addr == "" || domain == "" {
			t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
		}
		run(t, addr, freshUser(domain), "pass")
	})
}

// TestAccountCase: auth.fold_case says whether the upstream folds the case
// of user names. Off, "Bob" and "bob" are two accounts with their own
// lock, records, failure count and session count; on (the default, what
// Dovecot, Gmail and Microsoft do), they are one account under one lock.
func TestAccountCase(t *testing.T) {
	t.Run("case-sensitive upstream, fold_case off", func(t *testing.T) {
		up := startUsersUpstream(t, false, "Bob", "bob")
		cfg := secConfig(up.addr)
		cfg.Auth.FoldCase = false
		cfg.Limits.MaxLoginFailuresPerAccount = 2
		cfg.Limits.MaxSessionsPerAccount = 1
		s := startSec(t, cfg)

		// The same device tag of both accounts, at once: two maildrops.
		big := dialPOP(t, s.addr)
		big.login("Bob#desk", usersPassword)
		small := dialPOP(t, s.addr)
		small.login("bob#desk", usersPassword)
		for _, c := range []struct {
			conn *popConn
			name string
		}{{big, "Bob"}, {small, "bob"}} {
			if got := c.conn.retr(1); !bytes.Equal(got, up.raw[c.name]) {
				t.Errorf("%s#desk RETR 1 = %q, want %s's own message", c.name, got, c.name)
			}
		}
		big.quit()
		small.quit()
		// Each account has a mailbox record of its own, with its own
		// message's size.
		b := s.srv.Bridge
		for _, name := range []string{"Bob", "bob"} {
			rec, err := b.store.LoadMailbox(context.Background(), b.mailboxKey(name))
			if err != nil {
				t.Fatal(err)
			}
			if len(rec.Entries) != 1 || rec.Entries[0].Size != int64(len(up.raw[name])) {
				t.Errorf("record of %s: %+v, want its one message of %d octets", name, rec.Entries, len(up.raw[name]))
			}
		}
		if b.mailboxKey("Bob") == b.mailboxKey("bob") {
			t.Errorf("Bob and bob share the mailbox key %q", b.mailboxKey("bob"))
		}

		// Failures of Bob lock out Bob only.
		for range 2 {
			p, err := dialLogin(s.addr, "")
			if err != nil {
				t.Fatal(err)
			}
			if r, err := p.userPass("Bob", "wrong"); answerOf(r, err) != "-ERR [AUTH] authentication failed" {
				t.Fatalf("wrong password for Bob: %q %v", r, err)
			}
			p.close()
		}
		p, err := dialLogin(s.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		if r, err := p.userPass("Bob", usersPassword); !strings.HasPrefix(answerOf(r, err), "-ERR [LOGIN-DELAY]") {
			t.Errorf("Bob after 2 failures: %q %v, want [LOGIN-DELAY]", r, err)
		}
		p.close()
		// bob's session count is bob's: one session each is allowed.
		small = dialPOP(t, s.addr)
		small.login("bob#phone", usersPassword)
		small.quit()
	})

	run := func(t *testing.T, addr, lower, pass string) {
		cfg := secConfig(addr)
		cfg.Limits.MaxLoginFailuresPerAccount = 2
		s := startSec(t, cfg)
		upper := strings.ToUpper(lower[:1]) + lower[1:]
		held := mustLogin(t, s.addr, strings.ToUpper(lower)+"#desk", pass)
		p, err := dialLogin(s.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		if r, err := p.userPass(lower+"#desk", pass); !strings.HasPrefix(answerOf(r, err), "-ERR [IN-USE]") {
			t.Errorf("%s#desk while %s#desk is open: %q %v, want [IN-USE]", lower, strings.ToUpper(lower), r, err)
		}
		p.close()
		other := mustLogin(t, s.addr, upper+"#phone", pass)
		other.cmd("QUIT")
		held.cmd("QUIT")
		// The failure count is the account's, whatever the case.
		for _, name := range []string{upper, strings.ToUpper(lower)} {
			p, err := dialLogin(s.addr, "")
			if err != nil {
				t.Fatal(err)
			}
			if r, err := p.userPass(name, "wrong"); answerOf(r, err) != "-ERR [AUTH] authentication failed" {
				t.Fatalf("wrong password for %s: %q %v", name, r, err)
			}
			p.close()
		}
		p, err = dialLogin(s.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		if r, err := p.userPass(lower, pass); !strings.HasPrefix(answerOf(r, err), "-ERR [LOGIN-DELAY]") {
			t.Errorf("%s after 2 failures of other spellings: %q %v, want [LOGIN-DELAY]", lower, r, err)
		}
		p.close()
	}
	t.Run("case-insensitive upstream, fold_case on", func(t *testing.T) {
		up := startUsersUpstream(t, true, "carol")
		run(t, up.addr, "carol", usersPassword)
	})
	t.Run("dovecot, fold_case on", func(t *testing.T) {
		addr, domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR"), os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
		if addr == "" || domain == "" {
			t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
		}
		// Dovecot's default auth_username_format is %Lu: it folds.
		run(t, addr, freshUser(domain), "pass")
	})
}
