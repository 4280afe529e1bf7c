package bridge

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// Warm upstream connections (warm.go): the connection of a session that
// ended well is kept for the next session of the same account, mailbox
// and password.

// withWarm turns warm connections on (the harness turns them off).
func withWarm(ttl time.Duration) envOpt {
	return withConfig(func(c *Config) {
		c.Upstream.WarmTTL, c.Upstream.WarmPerAccount, c.Upstream.WarmTotal = ttl, 1, 100
	})
}

// warmClock is a clock the test moves.
type warmClock struct {
	mu sync.Mutex
	t  time.Time
}

func newWarmClock() *warmClock { return &warmClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *warmClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *warmClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logins counts the LOGIN commands the memory server received.
func logins(mem *imaptest.MemServer) int { return len(mem.CommandsNamed("LOGIN")) }

// poll logs in with pass, checks the listing holds want (message bytes,
// in order), retrieves each message and quits.
func poll(t *testing.T, e *env, user, pass string, want [][]byte) {
	t.Helper()
	c := dialPOP(t, e.addr)
	defer c.drop()
	c.ok("USER %s", user)
	if r := c.cmd("PASS %s", pass); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login as %s: %q", user, r)
	}
	if got := c.list(); len(got) != len(want) {
		t.Fatalf("%s: LIST has %d messages, want %d", user, len(got), len(want))
	}
	for i, w := range want {
		if got := c.retr(i + 1); !bytes.Equal(got, w) {
			t.Fatalf("%s: RETR %d = %q, want %q", user, i+1, got, w)
		}
	}
	if r := c.quit(); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("%s: QUIT: %q", user, r)
	}
}

// refused logs in with pass and expects -ERR [AUTH].
func refused(t *testing.T, e *env, user, pass string) {
	t.Helper()
	c := dialPOP(t, e.addr)
	defer c.drop()
	c.ok("USER %s", user)
	if r := c.cmd("PASS %s", pass); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Fatalf("login as %s with a wrong password: %q, want -ERR [AUTH]", user, r)
	}
}

func warmMessage(i int) []byte {
	return fmt.Appendf(nil, "From: a@example.org\r\nSubject: warm %d\r\nMessage-ID: <warm-%d@example.org>\r\n\r\nbody %d\r\n", i, i, i)
}

func TestWarmReuseLogsInOnce(t *testing.T) {
	up := memUpstream(t)
	msgs := [][]byte{warmMessage(1), warmMessage(2)}
	for _, m := range msgs {
		up.mem.Append("INBOX", m)
	}
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, msgs)
	up.mem.ResetCommands()
	const n = 5
	for range n {
		poll(t, e, up.user, up.pass, msgs)
	}
	if got := logins(up.mem); got != 0 {
		t.Errorf("%d upstream LOGINs for %d sessions after the first, want 0", got, n)
	}
	// An unchanged poll asks the upstream only for the status: no
	// listing, no search, no login.
	for _, c := range up.mem.Commands() {
		if !slices.Contains([]string{"IDLE", "DONE", "SELECT", "NOOP", "UID FETCH"}, c.Name) {
			t.Errorf("a warm session sent %s upstream", c.Line)
		}
	}
	if got := len(up.mem.CommandsNamed("SELECT")); got != n {
		t.Errorf("%d SELECTs for %d warm sessions, want one each", got, n)
	}
	m := e.srv.metrics
	if got := testutil.ToFloat64(m.warmReuses); got != n {
		t.Errorf("popbridge_upstream_warm_reuses_total = %v, want %d", got, n)
	}
	if got := testutil.ToFloat64(m.warmHeld); got != 1 {
		t.Errorf("popbridge_upstream_warm_connections = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.warmMisses.WithLabelValues("none")); got != 1 {
		t.Errorf("warm misses (none) = %v, want 1 (the first session)", got)
	}
	// The upstream logins are counted by the command histogram.
	if got := observations(t, m.upstreamTime, "login"); got != 1 {
		t.Errorf("upstream logins observed: %d, want 1", got)
	}
}

func TestWarmWrongPasswordLogsInUpstream(t *testing.T) {
	up := memUpstream(t)
	msgs := [][]byte{warmMessage(1)}
	up.mem.Append("INBOX", msgs[0])
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, msgs)
	refused(t, e, up.user, up.pass+"x")
	if got := logins(up.mem); got != 2 {
		t.Fatalf("%d upstream LOGINs, want 2: the wrong password must be tried upstream, not ride the warm connection", got)
	}
	if got := up.mem.AuthAttempts(); !slices.Equal(got, []string{"LOGIN alice ok", "LOGIN alice refused"}) {
		t.Fatalf("upstream logins %q, want the right password's, then the wrong one's refused", got)
	}
	// The warm connection of the right password is still there.
	poll(t, e, up.user, up.pass, msgs)
	if got := logins(up.mem); got != 2 {
		t.Errorf("%d upstream LOGINs, want 2 (the right password reuses its warm connection)", got)
	}
	if got := testutil.ToFloat64(e.srv.metrics.warmMisses.WithLabelValues("credentials")); got != 1 {
		t.Errorf("warm misses (credentials) = %v, want 1", got)
	}
}

func TestWarmChangedPasswordStopsAfterTTL(t *testing.T) {
	up := memUpstream(t)
	msgs := [][]byte{warmMessage(1)}
	up.mem.Append("INBOX", msgs[0])
	clock := newWarmClock()
	e := startBridge(t, up, withWarm(time.Minute), withClock(clock.now))
	poll(t, e, up.user, up.pass, msgs)
	up.mem.SetPassword("a new password")
	// Within the TTL the old password still works: the warm connection
	// logged in with it (the documented window).
	clock.advance(30 * time.Second)
	poll(t, e, up.user, up.pass, msgs)
	if got := logins(up.mem); got != 1 {
		t.Fatalf("%d upstream LOGINs, want 1", got)
	}
	clock.advance(61 * time.Second)
	refused(t, e, up.user, up.pass)
	if got := logins(up.mem); got != 2 {
		t.Errorf("%d upstream LOGINs, want 2", got)
	}
	poll(t, e, up.user, "a new password", msgs)
	if got := testutil.ToFloat64(e.srv.metrics.warmMisses.WithLabelValues("expired")); got != 1 {
		t.Errorf("warm misses (expired) = %v, want 1", got)
	}
}

func TestWarmByeWhileParked(t *testing.T) {
	up := memUpstream(t)
	msgs := [][]byte{warmMessage(1), warmMessage(2)}
	for _, m := range msgs {
		up.mem.Append("INBOX", m)
	}
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, msgs)
	if n := up.mem.ByeAll("going down for maintenance"); n != 1 {
		t.Fatalf("BYE to %d connections, want the 1 warm one", n)
	}
	poll(t, e, up.user, up.pass, msgs)
	if got := logins(up.mem); got != 2 {
		t.Errorf("%d upstream LOGINs, want 2 (a fresh login after the BYE)", got)
	}
}

func TestWarmUIDValidityChangeDrops(t *testing.T) {
	up := memUpstream(t)
	old := [][]byte{warmMessage(1)}
	up.mem.Append("INBOX", old[0])
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, old)
	before := up.mem.UIDValidity("INBOX")
	up.mem.Recreate("INBOX")
	if up.mem.UIDValidity("INBOX") == before {
		t.Fatal("Recreate kept the UIDVALIDITY")
	}
	now := [][]byte{warmMessage(2), warmMessage(3)}
	for _, m := range now {
		up.mem.Append("INBOX", m)
	}
	poll(t, e, up.user, up.pass, now)
	if got := logins(up.mem); got != 2 {
		t.Errorf("%d upstream LOGINs, want 2 (the warm connection is dropped at a UIDVALIDITY change)", got)
	}
	if got := testutil.ToFloat64(e.srv.metrics.warmMisses.WithLabelValues("uidvalidity")); got != 1 {
		t.Errorf("warm misses (uidvalidity) = %v, want 1", got)
	}
}

// Two accounts with the same password, sessions interleaved: each gets
// its own mail, byte for byte, and one login each.
func TestWarmNeverCrossesAccounts(t *testing.T) {
	users := imaptest.NewUsers(t, false, "ann", "bob")
	mail := map[string][][]byte{"ann": {warmMessage(10)}, "bob": {warmMessage(20), warmMessage(21)}}
	for name, ms := range mail {
		for _, m := range ms {
			users.Append(name, m)
		}
	}
	up := &upstreamEnv{name: "users", addr: users.Addr, user: "ann", pass: imaptest.UsersPassword}
	e := startBridge(t, up, withWarm(time.Minute), withConfig(func(c *Config) { c.Auth.FoldCase = false }))
	for range 3 {
		for _, name := range []string{"ann", "bob"} {
			poll(t, e, name, imaptest.UsersPassword, mail[name])
		}
	}
	for _, name := range []string{"ann", "bob"} {
		if got := users.LoginsOf(name); got != 1 {
			t.Errorf("%s: %d upstream LOGINs, want 1", name, got)
		}
	}
}

// A parked connection holds its place in the account's connection
// budget; a session that needs a new connection closes it instead of
// being refused.
func TestWarmCountsInBudget(t *testing.T) {
	up := memUpstream(t)
	msgs := [][]byte{warmMessage(1)}
	up.mem.Append("INBOX", msgs[0])
	e := startBridge(t, up, withWarm(time.Minute), withConfig(func(c *Config) { c.Upstream.MaxConnectionsPerAccount = 1 }))
	poll(t, e, up.user, up.pass, msgs)
	held := func() int {
		ps := e.srv.Bridge.prov
		ps.mu.Lock()
		defer ps.mu.Unlock()
		return ps.conns[up.user]
	}
	if got := held(); got != 1 {
		t.Fatalf("the account holds %d budget places with a parked connection, want 1", got)
	}
	// A new password needs a new connection: the parked one (of the
	// old password) gives up its place.
	up.mem.SetPassword("another")
	poll(t, e, up.user, "another", msgs)
	if got := held(); got != 1 {
		t.Errorf("the account holds %d budget places, want 1 (the new warm connection)", got)
	}
	if got := logins(up.mem); got != 2 {
		t.Errorf("%d upstream LOGINs, want 2", got)
	}
}

func TestWarmShutdownLogsOut(t *testing.T) {
	up := memUpstream(t)
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, nil)
	if got := len(up.mem.CommandsNamed("LOGOUT")); got != 0 {
		t.Fatalf("%d LOGOUTs after QUIT, want 0: the connection is kept warm", got)
	}
	e.stop()
	if got := len(up.mem.CommandsNamed("LOGOUT")); got != 1 {
		t.Errorf("%d LOGOUTs after shutdown, want 1", got)
	}
}

func TestWarmReloadTurnsOff(t *testing.T) {
	up := memUpstream(t)
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, nil)
	poll(t, e, up.user, up.pass, nil)
	if got := logins(up.mem); got != 1 {
		t.Fatalf("%d upstream LOGINs, want 1", got)
	}
	cfg := e.srv.cfg
	cfg.Upstream.WarmTTL = 0
	if err := e.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	// The connection parked before the reload is logged out by it, not
	// kept until its TTL or the account's next login.
	if got := len(up.mem.CommandsNamed("LOGOUT")); got != 1 {
		t.Errorf("%d LOGOUTs once the reload returned, want 1", got)
	}
	poll(t, e, up.user, up.pass, nil)
	poll(t, e, up.user, up.pass, nil)
	if got := logins(up.mem); got != 3 {
		t.Errorf("%d upstream LOGINs, want 3: after warm_ttl = 0 each session logs in", got)
	}
}

// The warm keys: defaults, the environment, and the bounds.
func TestWarmConfig(t *testing.T) {
	file := "[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"none\"\n"
	cfg, err := parseConfig(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Upstream; u.WarmTTL != time.Minute || u.WarmPerAccount != 1 || u.WarmTotal != 1000 {
		t.Errorf("defaults: warm_ttl %v, warm_per_account %d, warm_total %d; want 1m, 1, 1000", u.WarmTTL, u.WarmPerAccount, u.WarmTotal)
	}
	cfg, err = parseConfig(file, []string{"POPBRIDGE_UPSTREAM_WARM_TTL=5m", "POPBRIDGE_UPSTREAM_WARM_PER_ACCOUNT=2", "POPBRIDGE_UPSTREAM_WARM_TOTAL=0"})
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Upstream; u.WarmTTL != 5*time.Minute || u.WarmPerAccount != 2 || u.WarmTotal != 0 || warmOn(u) {
		t.Errorf("from the environment: %v %d %d (on: %v); want 5m 2 0, off", u.WarmTTL, u.WarmPerAccount, u.WarmTotal, warmOn(u))
	}
	for _, bad := range []string{"warm_ttl = \"26m\"", "warm_ttl = \"-1s\"", "warm_per_account = -1", "warm_total = -1"} {
		_, err := parseConfig(file+bad+"\n", nil)
		key := "upstream." + strings.Fields(bad)[0]
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: error %v, want one naming %s", bad, err, key)
		}
	}
}

// What changes upstream while a connection is warm, and what the
// session on it changed, the next warm session sees exactly.
func TestWarmSeesChangesWhileParked(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		e := startBridge(t, up, withWarm(time.Minute))
		m1, m2, m3 := warmMessage(1), warmMessage(2), warmMessage(3)
		up.box.Append("INBOX", m1)
		poll(t, e, up.user, up.pass, [][]byte{m1})
		waitParkedIdle(t, up, 1)
		up.box.Append("INBOX", m2) // while parked, in IDLE
		poll(t, e, up.user, up.pass, [][]byte{m1, m2})

		// This session deletes message 1 (moved to Trash) on the warm
		// connection, which is then parked again.
		c := e.session("")
		c.ok("DELE 1")
		if r := c.quit(); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("QUIT: %q", r)
		}
		waitParkedIdle(t, up, 2)
		up.box.Append("INBOX", m3)
		poll(t, e, up.user, up.pass, [][]byte{m2, m3})
		if got := len(up.box.Messages("INBOX")); got != 2 {
			t.Errorf("INBOX holds %d messages, want 2", got)
		}
		if up.mem != nil {
			if got := logins(up.mem); got != 1 {
				t.Errorf("%d upstream LOGINs, want 1", got)
			}
		}
	})
}

// waitParkedIdle waits until the warm connection entered IDLE (the n-th
// IDLE the memory server received; on Dovecot, twice the delay before it).
func waitParkedIdle(t *testing.T, up *upstreamEnv, n int) {
	t.Helper()
	if up.mem == nil {
		time.Sleep(2 * time.Second)
		return
	}
	for deadline := time.Now().Add(20 * time.Second); len(up.mem.CommandsNamed("IDLE")) < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the warm connection did not enter IDLE (#%d) within 20s", n)
		}
	}
}

// A session that saw an upstream error does not leave its connection
// warm: its state is not known to be sound.
func TestWarmNotAfterUpstreamError(t *testing.T) {
	up := memUpstream(t)
	msgs := [][]byte{warmMessage(1)}
	up.mem.Append("INBOX", msgs[0])
	e := startBridge(t, up, withWarm(time.Minute))
	poll(t, e, up.user, up.pass, msgs) // parks a connection
	c := e.session("")
	up.mem.Fail("FETCH", imaptest.ErrServerBug)
	if r := c.cmd("RETR 1"); !strings.HasPrefix(r, "-ERR") {
		t.Fatalf("RETR with a failing upstream FETCH: %q", r)
	}
	up.mem.Fail("FETCH", nil)
	if r := c.quit(); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("QUIT: %q", r)
	}
	// LOGINs: the first poll's, the failed RETR's reconnect (withConn),
	// and the next poll's.
	poll(t, e, up.user, up.pass, msgs)
	if got := logins(up.mem); got != 3 {
		t.Errorf("%d upstream LOGINs, want 3: the connection that saw an error is not reused", got)
	}
}

// warm_total bounds the warm connections of the process: parking one
// more closes the oldest.
func TestWarmTotalBound(t *testing.T) {
	users := imaptest.NewUsers(t, false, "ann", "bob")
	up := &upstreamEnv{name: "users", addr: users.Addr, user: "ann", pass: imaptest.UsersPassword}
	e := startBridge(t, up, withWarm(time.Minute), withConfig(func(c *Config) { c.Upstream.WarmTotal = 1 }))
	poll(t, e, "ann", imaptest.UsersPassword, nil)
	poll(t, e, "bob", imaptest.UsersPassword, nil) // ann's is closed
	poll(t, e, "bob", imaptest.UsersPassword, nil)
	poll(t, e, "ann", imaptest.UsersPassword, nil)
	if a, b := users.LoginsOf("ann"), users.LoginsOf("bob"); a != 2 || b != 1 {
		t.Errorf("upstream LOGINs: ann %d, bob %d; want 2 and 1", a, b)
	}
	if got := testutil.ToFloat64(e.srv.metrics.warmHeld); got != 1 {
		t.Errorf("popbridge_upstream_warm_connections = %v, want 1", got)
	}
}

// The pool's HMAC: one per (account, password) pair, with no two pairs
// sharing an input, and a key of each process's own.
func TestWarmCredentials(t *testing.T) {
	p, q := newWarmPool(time.Now), newWarmPool(time.Now)
	if p.cred("alice", "pw") != p.cred("alice", "pw") {
		t.Error("the same login and password give two HMACs")
	}
	if p.cred("ab", "c") == p.cred("a", "bc") {
		t.Error("(ab, c) and (a, bc) share an HMAC")
	}
	if p.cred("alice", "pw") == p.cred("alice", "pw ") || p.cred("alice", "pw") == p.cred("bob", "pw") {
		t.Error("another password or account gives the same HMAC")
	}
	if p.cred("alice", "pw") == q.cred("alice", "pw") {
		t.Error("two pools share an HMAC key")
	}
}

// A login refused [IN-USE] (the device is in session) leaves the
// connection it opened warm for the next one.
func TestWarmInUseKeepsConnection(t *testing.T) {
	up := memUpstream(t)
	e := startBridge(t, up, withWarm(time.Minute), withConfig(func(c *Config) { c.Upstream.WarmPerAccount = 2 }))
	poll(t, e, up.user, up.pass, nil) // LOGIN 1, parked
	held := e.session("")             // takes it
	defer held.drop()
	for range 3 {
		c := dialPOP(t, e.addr)
		c.ok("USER %s", up.user)
		if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
			t.Fatalf("a second session of the device: %q, want -ERR [IN-USE]", r)
		}
		c.drop()
	}
	if got := logins(up.mem); got != 2 {
		t.Errorf("%d upstream LOGINs, want 2: the refused logins share one warm connection", got)
	}
}
