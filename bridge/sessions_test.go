package bridge

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/popbridge/popbridge/state/stores"
)

// TestSessionsPerAccount: limits.max_sessions_per_account caps the
// sessions of one account, before its upstream login and its lock, with
// -ERR [IN-USE]; other accounts log in as usual. With PostgreSQL, where
// each session holds a database connection for its lock, this is what
// keeps one account from taking them all.
func TestSessionsPerAccount(t *testing.T) {
	run := func(t *testing.T, cfg Config) {
		up := startUsersUpstream(t, true, "carol", "dave")
		cfg.Upstream.Address = up.addr
		cfg.Limits.MaxSessionsPerAccount = 3
		st, err := stores.Open(t.Context(), cfg.State, stores.Options{MaxLocks: StateLocks(cfg)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := startSecStore(t, cfg, st)
		tooMany := "-ERR [IN-USE] too many sessions for this account"
		try := func(user string) string {
			t.Helper()
			p, err := dialLogin(s.addr, "")
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			return answerOf(p.userPass(user, usersPassword))
		}

		var held []*popLogin
		for i := range 3 {
			held = append(held, mustLogin(t, s.addr, fmt.Sprintf("carol#d%d", i), usersPassword))
		}
		for _, user := range []string{"carol#d3", "CAROL#d4", "carol"} {
			if r := try(user); !strings.HasPrefix(r, tooMany) {
				t.Errorf("%s with 3 sessions open: %q, want %q", user, r, tooMany)
			}
		}
		if n := len(up.Logins()); n != 3 {
			t.Errorf("%d upstream LOGINs, want 3: the refused sessions must not reach the upstream", n)
		}
		// Another account is not affected.
		for i := range 3 {
			mustLogin(t, s.addr, fmt.Sprintf("dave#d%d", i), usersPassword).cmd("QUIT")
		}
		// A session that ends frees its place at once.
		if r, err := held[0].cmd("QUIT"); err != nil || !strings.HasPrefix(r, "+OK") {
			t.Fatalf("QUIT: %q %v", r, err)
		}
		held[0] = mustLogin(t, s.addr, "carol#d3", usersPassword)
		for _, p := range held {
			p.cmd("QUIT")
		}

		// 20 logins at once, with the right password: 3 get in.
		answers := make([]string, 20)
		var wg sync.WaitGroup
		for i := range answers {
			wg.Go(func() {
				p, err := dialLogin(s.addr, "")
				if err != nil {
					answers[i] = err.Error()
					return
				}
				answers[i] = answerOf(p.userPass(fmt.Sprintf("carol#b%d", i), usersPassword))
				// Hold the session until every answer is in.
				t.Cleanup(p.close)
			})
		}
		wg.Wait()
		var in, refused int
		for _, a := range answers {
			switch {
			case strings.HasPrefix(a, "+OK"):
				in++
			case strings.HasPrefix(a, tooMany):
				refused++
			default:
				t.Errorf("answer %q", a)
			}
		}
		if in != 3 || refused != 17 {
			t.Errorf("20 simultaneous logins: %d in, %d refused; want 3 and 17", in, refused)
		}
	}
	t.Run("bolt", func(t *testing.T) {
		cfg := secConfig("")
		cfg.State.Path = filepath.Join(t.TempDir(), "state.db")
		run(t, cfg)
	})
	t.Run("postgres", func(t *testing.T) {
		cfg := secConfig("")
		cfg.State.Driver, cfg.State.DSN = "postgres", pgtest.Schema(t)
		run(t, cfg)
	})
}

// TestPostgresLockPool: the PostgreSQL store keeps a connection per
// maildrop lock; stores.Open sizes that pool (bridge.StateLocks) from limits.max_connections,
// so that it is never what refuses a session the limits allow. 110
// sessions (above the store's default of 100 locks) of one account with
// the per-account cap off, and another account still logs in.
func TestPostgresLockPool(t *testing.T) {
	dsn := pgtest.Schema(t)
	up := startUsersUpstream(t, true, "carol", "dave")
	cfg := secConfig(up.addr)
	cfg.State.Driver, cfg.State.DSN = "postgres", dsn
	cfg.Limits.MaxConnections = 130
	cfg.Limits.MaxSessionsPerAccount = 0
	st, err := stores.Open(t.Context(), cfg.State, stores.Options{MaxLocks: StateLocks(cfg)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startSecStore(t, cfg, st)
	for i := range 110 {
		mustLogin(t, s.addr, fmt.Sprintf("carol#d%d", i), usersPassword)
	}
	mustLogin(t, s.addr, "dave", usersPassword).cmd("QUIT")
}
