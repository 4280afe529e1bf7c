package limits

import (
	"testing"

	"github.com/popbridge/popbridge/internal/netlist"
)

// TestLimitsSetConfig: a reload lowers and raises limits without losing the
// connections and sessions open now, changes the exempt networks, and
// starts the failure counts anew only when their limits change.
func TestLimitsSetConfig(t *testing.T) {
	cfg := Config{MaxConnections: 3, MaxSessionsPerAccount: 3, MaxLoginFailuresPerIP: 2, LoginFailureWindow: 60e9}
	l, _ := newTestLimits(t, cfg)
	var releases []func()
	for range 2 {
		r, err := l.AcquireConn(tcp("192.0.2.1:1"))
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	if _, err := l.AcquireSession("alice#a"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AcquireSession("alice#b"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		fail(l, "198.51.100.1:1", "bob")
	}
	if _, err := fail(l, "198.51.100.1:1", "bob"); code(err) != LoginFailuresIP {
		t.Fatalf("third failure from one address, limit 2: %v", err)
	}

	// Lower: two connections and two sessions are open, the limits are 2.
	lower := cfg
	lower.MaxConnections, lower.MaxSessionsPerAccount = 2, 2
	l.SetConfig(lower)
	if _, err := l.AcquireConn(tcp("192.0.2.2:1")); code(err) != Connections {
		t.Errorf("a connection beyond the lowered limit: %v", err)
	}
	if _, err := l.AcquireSession("alice#c"); code(err) != SessionsPerAccount {
		t.Errorf("a session beyond the lowered limit: %v", err)
	}
	if _, err := fail(l, "198.51.100.1:1", "bob"); code(err) != LoginFailuresIP {
		t.Errorf("the failure counts were lost though their limits did not change: %v", err)
	}
	releases[0]()
	r, err := l.AcquireConn(tcp("192.0.2.2:1"))
	if err != nil {
		t.Errorf("after a release under the lowered limit: %v", err)
	} else {
		r()
	}

	// Exempt networks and a new failure limit: the counts start anew.
	next := lower
	next.MaxLoginFailuresPerIP = 5
	next.MaxConnections, next.MaxConnectionsPerIP = 0, 1
	next.ExemptNetworks = netlist.MustParse("192.0.2.0/24")
	l.SetConfig(next)
	if _, err := fail(l, "198.51.100.1:1", "bob"); err != nil {
		t.Errorf("after raising the failure limit: %v", err)
	}
	for range 3 {
		if _, err := l.AcquireConn(tcp("192.0.2.9:1")); err != nil {
			t.Fatalf("an address of the new exempt network: %v", err)
		}
	}
	if _, err := l.AcquireConn(tcp("198.51.100.7:1")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AcquireConn(tcp("198.51.100.7:1")); code(err) != ConnectionsPerIP {
		t.Errorf("a second connection of an address, new limit 1 per address: %v", err)
	}
}
