package bridge

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
)

// clientWrites is a state.Store that keeps every ClientChange applied, by
// client record, and can make ApplyClient fail.
type clientWrites struct {
	state.Store
	mu   sync.Mutex
	got  map[state.ClientKey][]state.ClientChange
	fail error
}

func (s *clientWrites) ApplyClient(ctx context.Context, k state.ClientKey, ch state.ClientChange) error {
	s.mu.Lock()
	s.got[k] = append(s.got[k], ch)
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return fail
	}
	return s.Store.ApplyClient(ctx, k, ch)
}

// take returns the changes applied to k since the last take.
func (s *clientWrites) take(k state.ClientKey) []state.ClientChange {
	s.mu.Lock()
	defer s.mu.Unlock()
	chs := s.got[k]
	delete(s.got, k)
	return chs
}

// TestLoginRecordsLastLogin: a POP3 login whose maildrop opens stores the
// bridge's clock as the device's last login, in one write to its client
// record (the one that prunes hidden UIDLs gone upstream, when there is
// one); a failed login stores nothing, and a failing write does not fail
// the login.
func TestLoginRecordsLastLogin(t *testing.T) {
	up := memUpstream(t)
	seed(up, 2)
	var (
		mu  sync.Mutex
		now = time.Date(2026, 12, 3, 13, 14, 15, 123456789, time.UTC)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	setClock := func(t time.Time) { mu.Lock(); defer mu.Unlock(); now = t }
	spy := &clientWrites{got: map[state.ClientKey][]state.ClientChange{}}
	e := startBridge(t, up, withClock(clock), withConfig(func(c *Config) { c.Delete.Policy = PolicyHide }),
		withStoreWrap(func(st state.Store) state.Store { spy.Store = st; return spy }))
	mbox := e.srv.Bridge.mailboxKey(up.user)
	phone, desk, tablet := state.ClientKey{Mailbox: mbox, Client: "phone"}, state.ClientKey{Mailbox: mbox}, state.ClientKey{Mailbox: mbox, Client: "tablet"}
	lastLogin := func(k state.ClientKey) time.Time {
		t.Helper()
		c, err := e.st.LoadClient(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		return c.LastLogin
	}
	first := now

	c := e.session("phone")
	if chs := spy.take(phone); len(chs) != 1 || !chs[0].LastLogin.Equal(first) || len(chs[0].Hide)+len(chs[0].Unhide) != 0 || chs[0].SetPending != nil || chs[0].ClearPending {
		t.Errorf("writes to the client record at login: %+v, want one setting only the last login %v", chs, first)
	}
	if got := lastLogin(phone); !got.Equal(first.Truncate(time.Microsecond)) || got.Location() != time.UTC {
		t.Errorf("phone's last login = %v, want %v", got, first.Truncate(time.Microsecond))
	}
	c.ok("DELE 1") // hidden from the phone at QUIT
	c.quit()
	if got := lastLogin(desk); !got.IsZero() {
		t.Errorf("the desk never logged in, but its last login is %v", got)
	}

	// A failed login records nothing.
	bad := dialPOP(t, e.addr)
	bad.ok("USER %s#tablet", up.user)
	if r := bad.cmd("PASS wrong"); !strings.HasPrefix(r, "-ERR") {
		t.Fatalf("PASS with a wrong password: %q", r)
	}
	bad.drop()
	if got := lastLogin(tablet); !got.IsZero() || len(spy.take(tablet)) != 0 {
		t.Errorf("a failed login wrote a last login %v", got)
	}

	// The message the phone hid leaves the mailbox: the next login prunes
	// its hidden UIDL and records the login in the same write.
	up.box.Reset("INBOX")
	second := first.Add(10 * time.Minute)
	setClock(second)
	spy.take(phone)
	c = e.session("phone")
	chs := spy.take(phone)
	if len(chs) != 1 || !chs[0].LastLogin.Equal(second) || len(chs[0].Unhide) != 1 {
		t.Errorf("writes to the client record at a login that prunes: %+v, want one with Unhide and the last login", chs)
	}
	c.quit()
	if cl, err := e.st.LoadClient(t.Context(), phone); err != nil || len(cl.Hidden) != 0 || !cl.LastLogin.Equal(second.Truncate(time.Microsecond)) {
		t.Errorf("phone's record after the pruning login: %+v, %v", cl, err)
	}

	// The desk logs in later; the phone's last login stays.
	third := second.Add(time.Hour)
	setClock(third)
	c = e.session("")
	c.quit()
	if got := lastLogin(desk); !got.Equal(third.Truncate(time.Microsecond)) {
		t.Errorf("desk's last login = %v, want %v", got, third)
	}
	if got := lastLogin(phone); !got.Equal(second.Truncate(time.Microsecond)) {
		t.Errorf("phone's last login = %v after the desk's login, want %v", got, second)
	}

	// A store that cannot write the last login does not fail the login.
	spy.mu.Lock()
	spy.fail = errors.New("disk on fire")
	spy.mu.Unlock()
	setClock(third.Add(time.Hour))
	c = e.session("phone")
	if n := len(c.uidls()); n != 0 {
		t.Errorf("the session lists %d messages, want 0", n)
	}
	c.quit()
	spy.mu.Lock()
	spy.fail = nil
	spy.mu.Unlock()
	if got := lastLogin(phone); !got.Equal(second.Truncate(time.Microsecond)) {
		t.Errorf("phone's last login = %v after a failed write, want %v still", got, second)
	}
}
