package limits

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/netlist"
)

// fakeClock is a settable clock for Limits.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestLimits(t *testing.T, cfg Config) (*Limits, *fakeClock) {
	t.Helper()
	l := New(cfg, func(login string) string {
		account, _, _ := strings.Cut(login, "#")
		return strings.ToLower(account)
	})
	clock := &fakeClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	l.now = clock.now
	return l, clock
}

func tcp(s string) net.Addr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		panic(err)
	}
	return a
}

// fail runs one failed login and returns its delay, or the refusal.
func fail(l *Limits, remote, user string) (time.Duration, error) {
	end, err := l.BeginLogin(tcp(remote), user)
	if err != nil {
		return 0, err
	}
	return end(true), nil
}

// code returns the kind of limit that refused, or the error's text.
func code(err error) Kind {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Kind
	}
	return Kind(fmt.Sprint(err))
}

func TestLimitsDelayGrowsAndDecays(t *testing.T) {
	l, clock := newTestLimits(t, Config{
		LoginFailureDelay: time.Second, LoginFailureDelayMax: 5 * time.Second,
		MaxLoginFailuresPerIP: 4, MaxLoginFailuresPerAccount: 100, LoginFailureWindow: 4 * time.Hour,
	})
	var delays []time.Duration
	for range 4 {
		d, err := fail(l, "192.0.2.1:1000", "alice")
		if err != nil {
			t.Fatal(err)
		}
		delays = append(delays, d)
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second}; fmt.Sprint(delays) != fmt.Sprint(want) {
		t.Errorf("delays %v, want %v", delays, want)
	}
	if _, err := fail(l, "192.0.2.1:1001", "bob"); code(err) != LoginFailuresIP {
		t.Errorf("fifth failure of the address: %v, want [LOGIN-DELAY]", err)
	}
	// One failure is forgiven per window/max = 1 hour.
	clock.advance(59 * time.Minute)
	if _, err := fail(l, "192.0.2.1:1002", "bob"); code(err) != LoginFailuresIP {
		t.Errorf("after 59 minutes: %v, want [LOGIN-DELAY]", err)
	}
	clock.advance(2 * time.Minute)
	end, err := l.BeginLogin(tcp("192.0.2.1:1003"), "bob")
	if err != nil {
		t.Fatalf("after 61 minutes: %v", err)
	}
	if d := end(false); d != 0 {
		t.Errorf("a success waits %v", d)
	}
	// A success forgives nothing: the next failure still waits long.
	if d, err := fail(l, "192.0.2.1:1004", "bob"); err != nil || d != 5*time.Second {
		t.Errorf("failure after the success: %v %v", d, err)
	}
	// Other addresses are not affected.
	if d, err := fail(l, "192.0.2.2:1000", "carol"); err != nil || d != time.Second {
		t.Errorf("another address: %v %v", d, err)
	}
}

func TestLimitsAccounts(t *testing.T) {
	l, _ := newTestLimits(t, Config{
		LoginFailureDelay: time.Second, LoginFailureDelayMax: time.Minute,
		MaxLoginFailuresPerAccount: 3, LoginFailureWindow: time.Hour,
	})
	for i, user := range []string{"Alice#phone", "alice", "ALICE#laptop"} {
		d, err := fail(l, fmt.Sprintf("198.51.100.%d:1", i), user)
		if err != nil || d != time.Second<<i {
			t.Errorf("failure %d: %v %v", i, d, err)
		}
	}
	_, err := fail(l, "203.0.113.1:1", "alice#new")
	if code(err) != LoginFailuresAccount || !strings.Contains(err.Error(), "for this account") || !strings.Contains(err.Error(), `account "alice"`) {
		t.Errorf("fourth failure of the account: %v", err)
	}
	if _, err := fail(l, "203.0.113.1:1", "bob"); err != nil {
		t.Errorf("another account: %v", err)
	}
}

// Every attempt in flight reserves one failure until it ends: at most the
// limit are outstanding or failed at once, a success gives its
// reservation back, and a failure keeps it (until the count decays).
func TestLimitsInFlight(t *testing.T) {
	l, _ := newTestLimits(t, Config{MaxLoginFailuresPerIP: 2, LoginFailureWindow: time.Hour})
	e1, err1 := l.BeginLogin(tcp("192.0.2.1:1"), "a")
	e2, err2 := l.BeginLogin(tcp("192.0.2.1:2"), "b")
	_, err3 := l.BeginLogin(tcp("192.0.2.1:3"), "c")
	if err1 != nil || err2 != nil || code(err3) != LoginFailuresIP {
		t.Fatalf("three concurrent attempts, limit 2, no failure yet: %v %v %v", err1, err2, err3)
	}
	if !strings.Contains(err3.Error(), "2 logins in progress") {
		t.Errorf("the refusal does not say why: %v", err3)
	}
	e1(false) // a success gives its place back
	e1(true)  // a second call changes nothing
	e3, err := l.BeginLogin(tcp("192.0.2.1:4"), "d")
	if err != nil {
		t.Fatalf("after an attempt in flight succeeded: %v", err)
	}
	e2(true) // a failure keeps its place
	if _, err := l.BeginLogin(tcp("192.0.2.1:5"), "e"); code(err) != LoginFailuresIP {
		t.Errorf("one failure and one attempt in flight, limit 2: %v, want [LOGIN-DELAY]", err)
	}
	e3(false)
	e4, err := l.BeginLogin(tcp("192.0.2.1:6"), "f")
	if err != nil {
		t.Fatalf("one failure, nothing in flight: %v", err)
	}
	e4(true)
	if _, err := l.BeginLogin(tcp("192.0.2.1:7"), "g"); code(err) != LoginFailuresIP || !strings.Contains(err.Error(), "2 recent failures") {
		t.Errorf("two failures, limit 2: %v, want [LOGIN-DELAY]", err)
	}
	// Other addresses are not affected.
	if end, err := l.BeginLogin(tcp("192.0.2.2:1"), "a"); err != nil {
		t.Errorf("another address: %v", err)
	} else {
		end(false)
	}
}

// AcquireSession counts sessions per account, as the account function
// names it, and frees a place once per release.
func TestLimitsSessions(t *testing.T) {
	l, _ := newTestLimits(t, Config{MaxSessionsPerAccount: 2})
	r1, err1 := l.AcquireSession("alice#phone")
	r2, err2 := l.AcquireSession("ALICE#laptop")
	_, err3 := l.AcquireSession("alice")
	if err1 != nil || err2 != nil || code(err3) != SessionsPerAccount {
		t.Fatalf("three sessions of one account, limit 2: %v %v %v", err1, err2, err3)
	}
	if r, err := l.AcquireSession("bob"); err != nil {
		t.Errorf("another account: %v", err)
	} else {
		r()
	}
	r1()
	r1()
	r3, err := l.AcquireSession("alice#desk")
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if _, err := l.AcquireSession("alice#x"); code(err) != SessionsPerAccount {
		t.Errorf("a released place was freed twice: %v", err)
	}
	r2()
	r3()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.sessions) != 0 {
		t.Errorf("after every release: %v", l.sessions)
	}
	off, _ := newTestLimits(t, Config{})
	for range 100 {
		if _, err := off.AcquireSession("alice"); err != nil {
			t.Fatalf("limit off: %v", err)
		}
	}
}

func TestLimitsAddresses(t *testing.T) {
	l, _ := newTestLimits(t, Config{MaxConnections: 100, MaxConnectionsPerIP: 2, ExemptNetworks: netlist.MustParse("10.0.0.0/8", "::1")})
	for _, tc := range []struct {
		addr, key string
		exempt    bool
	}{
		{"192.0.2.1:110", "192.0.2.1", false},
		{"[::ffff:192.0.2.1]:110", "192.0.2.1", false},
		{"[2001:db8:1:2:3:4:5:6]:110", "2001:db8:1:2::/64", false},
		{"[2001:db8:1:2:ffff::1]:995", "2001:db8:1:2::/64", false},
		{"[2001:db8:1:3::1]:995", "2001:db8:1:3::/64", false},
		{"10.1.2.3:110", "", true},
		{"[::1]:110", "", true},
	} {
		key, exempt := l.clientKey(tcp(tc.addr))
		if key != tc.key || exempt != tc.exempt {
			t.Errorf("clientKey(%s) = %q, %v; want %q, %v", tc.addr, key, exempt, tc.key, tc.exempt)
		}
	}
	// Two addresses of one IPv6 /64 share its limit.
	r1, err1 := l.AcquireConn(tcp("[2001:db8::1]:1"))
	r2, err2 := l.AcquireConn(tcp("[2001:db8::2]:1"))
	_, err3 := l.AcquireConn(tcp("[2001:db8::3]:1"))
	if err1 != nil || err2 != nil || code(err3) != ConnectionsPerIP {
		t.Fatalf("three connections of a /64: %v %v %v", err1, err2, err3)
	}
	r1()
	r1() // release is idempotent
	if r, err := l.AcquireConn(tcp("[2001:db8::3]:1")); err != nil {
		t.Errorf("after a release: %v", err)
	} else {
		r()
	}
	r2()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns != 0 || len(l.perIP) != 0 {
		t.Errorf("after releasing all: %d connections, %v", l.conns, l.perIP)
	}
}

// The tables forget counts that have decayed, so an attacker cycling
// through addresses cannot grow them without bound.
func TestLimitsSweep(t *testing.T) {
	l, clock := newTestLimits(t, Config{MaxLoginFailuresPerIP: 2, MaxLoginFailuresPerAccount: 2, LoginFailureWindow: time.Minute})
	for i := range 3 * minSweep {
		if _, err := fail(l, fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255), fmt.Sprintf("user%d", i)); err != nil {
			t.Fatal(err)
		}
		clock.advance(time.Second)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// A failure decays within window/max = 30 s: at most ~31 recent.
	if n := len(l.ipFail.m); n > 2*minSweep {
		t.Errorf("%d addresses kept", n)
	}
	if n := len(l.acctFail.m); n > 2*minSweep {
		t.Errorf("%d accounts kept", n)
	}
}
