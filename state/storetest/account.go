package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
)

// runAccounts runs the checks of state.AccountStore. Besides its
// documentation, the suite holds account stores to these points:
//
//   - Times come back Equal, in UTC, when they are whole microseconds; the
//     zero time comes back zero.
//   - Byte fields come back byte for byte, all 256 values; nil and empty
//     count as equal. Passwords come back in the order stored.
//   - ListAccounts orders by the bytes of the names.
//   - A cancelled wait in LockGrant leaves nothing held; Close frees the
//     grant locks of the Store and ends waits through it.
func (s *suite) runAccounts(t *testing.T) {
	t.Run("Account/LoadUnknown", s.accountLoadUnknown)
	t.Run("Account/RoundTrip", s.accountRoundTrip)
	t.Run("Account/Conflict", s.accountConflict)
	t.Run("Account/List", s.accountList)
	t.Run("Account/Delete", s.accountDelete)
	t.Run("Account/Race", s.accountRace)
	t.Run("Account/ApartFromMailboxes", s.accountApart)
	t.Run("Account/Reopen", s.accountReopen)
	t.Run("GrantLock/Exclusive", s.grantLockExclusive)
	t.Run("GrantLock/Waits", s.grantLockWaits)
	t.Run("GrantLock/Cancel", s.grantLockCancel)
	t.Run("GrantLock/Mutual", s.grantLockMutual)
	t.Run("GrantLock/Close", s.grantLockClose)
	if s.opts.Shared {
		t.Run("Shared/Accounts", s.sharedAccounts)
		t.Run("Shared/AccountRace", s.sharedAccountRace)
		t.Run("Shared/GrantLock", s.sharedGrantLock)
	}
}

// accounts returns the AccountStore of st, or skips t.
func accounts(t *testing.T, st state.Store) state.AccountStore {
	t.Helper()
	if c, ok := st.(*closeOnce); ok {
		st = c.Store
	}
	as, ok := st.(state.AccountStore)
	if !ok {
		t.Skip("the store does not implement state.AccountStore")
	}
	return as
}

// newAccounts opens an AccountStore on a fresh backing store.
func (s *suite) newAccounts(t *testing.T) (state.Store, state.AccountStore) {
	t.Helper()
	st := s.newStore(t)
	return st, accounts(t, st)
}

// allBytes is every byte value once, from seed on.
func allBytes(seed byte) []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i) + seed
	}
	return b
}

// at is a time of whole microseconds.
func at(day int, micro int) time.Time {
	return time.Date(2026, 3, day, 5, 6, 7, micro*1000, time.UTC)
}

// sampleAccount is a record with every field set.
func sampleAccount(name string) *state.Account {
	return &state.Account{
		Name: name, Kind: "delegated", Upstream: "m365", Provider: "microsoft",
		Identity: "alice@contoso.example", Mailbox: "shared@contoso.example",
		Passwords: []state.AppPassword{
			{Label: "scanner", Hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA", WrappedDEK: allBytes(1), Created: at(1, 1), LastUsed: at(2, 999999)},
			{Label: "laptop", Hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaB", WrappedDEK: allBytes(2), Created: at(3, 0)},
			{Label: "phone ü", Hash: "h3", WrappedDEK: []byte{0}, Created: at(4, 500)},
		},
		DEKVersion:       3,
		ServerWrappedDEK: allBytes(3),
		SealedGrant:      allBytes(4),
		GrantVersion:     1 << 40,
		GrantExpiry:      at(5, 123456),
		GrantUpdated:     at(6, 1),
		GrantStatus:      "reconsent-needed",
		GrantReason:      "invalid_grant: AADSTS70008 the refresh token has expired",
		GrantSince:       at(7, 2),
		Created:          at(1, 0),
		Updated:          at(8, 3),
	}
}

func cloneAccount(a *state.Account) *state.Account {
	c := *a
	c.Passwords = slices.Clone(a.Passwords)
	for i := range c.Passwords {
		c.Passwords[i].WrappedDEK = bytes.Clone(a.Passwords[i].WrappedDEK)
	}
	c.ServerWrappedDEK = bytes.Clone(a.ServerWrappedDEK)
	c.SealedGrant = bytes.Clone(a.SealedGrant)
	return &c
}

// diffAccount describes how got differs from want, or returns "".
func diffAccount(got, want *state.Account) string {
	var d []string
	str := func(field, g, w string) {
		if g != w {
			d = append(d, fmt.Sprintf("%s = %q, want %q", field, g, w))
		}
	}
	num := func(field string, g, w uint64) {
		if g != w {
			d = append(d, fmt.Sprintf("%s = %d, want %d", field, g, w))
		}
	}
	byt := func(field string, g, w []byte) {
		if !bytes.Equal(g, w) {
			d = append(d, fmt.Sprintf("%s = %d bytes %.16x…, want %d bytes %.16x…", field, len(g), g, len(w), w))
		}
	}
	tim := func(field string, g, w time.Time) {
		if !g.Equal(w) || g.IsZero() != w.IsZero() || (!g.IsZero() && g.Location() != time.UTC) {
			d = append(d, fmt.Sprintf("%s = %v, want %v (UTC)", field, g, w))
		}
	}
	str("Name", got.Name, want.Name)
	str("Kind", got.Kind, want.Kind)
	str("Upstream", got.Upstream, want.Upstream)
	str("Provider", got.Provider, want.Provider)
	str("Identity", got.Identity, want.Identity)
	str("Mailbox", got.Mailbox, want.Mailbox)
	num("DEKVersion", got.DEKVersion, want.DEKVersion)
	byt("ServerWrappedDEK", got.ServerWrappedDEK, want.ServerWrappedDEK)
	byt("SealedGrant", got.SealedGrant, want.SealedGrant)
	num("GrantVersion", got.GrantVersion, want.GrantVersion)
	tim("GrantExpiry", got.GrantExpiry, want.GrantExpiry)
	tim("GrantUpdated", got.GrantUpdated, want.GrantUpdated)
	str("GrantStatus", got.GrantStatus, want.GrantStatus)
	str("GrantReason", got.GrantReason, want.GrantReason)
	tim("GrantSince", got.GrantSince, want.GrantSince)
	num("Version", got.Version, want.Version)
	tim("Created", got.Created, want.Created)
	tim("Updated", got.Updated, want.Updated)
	if len(got.Passwords) != len(want.Passwords) {
		d = append(d, fmt.Sprintf("%d passwords, want %d", len(got.Passwords), len(want.Passwords)))
	} else {
		for i, g := range got.Passwords {
			w := want.Passwords[i]
			p := fmt.Sprintf("Passwords[%d].", i)
			str(p+"Label", g.Label, w.Label)
			str(p+"Hash", g.Hash, w.Hash)
			byt(p+"WrappedDEK", g.WrappedDEK, w.WrappedDEK)
			tim(p+"Created", g.Created, w.Created)
			tim(p+"LastUsed", g.LastUsed, w.LastUsed)
		}
	}
	if d == nil {
		return ""
	}
	return fmt.Sprint(d)
}

func loadAccount(t *testing.T, as state.AccountStore, name string) *state.Account {
	t.Helper()
	a, err := as.LoadAccount(t.Context(), name)
	if err != nil {
		t.Fatalf("LoadAccount(%q): %v", name, err)
	}
	return a
}

func checkAccount(t *testing.T, as state.AccountStore, want *state.Account) {
	t.Helper()
	if d := diffAccount(loadAccount(t, as, want.Name), want); d != "" {
		t.Errorf("account %q: %s", want.Name, d)
	}
}

// putAccount stores a, checks the version returned and sets a.Version to
// it.
func putAccount(t *testing.T, as state.AccountStore, a *state.Account) {
	t.Helper()
	v, err := as.PutAccount(t.Context(), a)
	if err != nil {
		t.Fatalf("PutAccount(%q, version %d): %v", a.Name, a.Version, err)
	}
	if v != a.Version+1 {
		t.Fatalf("PutAccount(%q, version %d) = %d, want %d", a.Name, a.Version, v, a.Version+1)
	}
	a.Version = v
}

// lockGrant takes a grant lock that should be free; it fails the test
// rather than wait long.
func lockGrant(t *testing.T, as state.AccountStore, name string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	release, err := as.LockGrant(ctx, name)
	if err != nil {
		t.Fatalf("LockGrant(%q): %v", name, err)
	}
	return release
}

// grantHeld checks that LockGrant(name) waits: it must give up with the
// context's error when the context ends.
func grantHeld(t *testing.T, as state.AccountStore, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	release, err := as.LockGrant(ctx, name)
	if err == nil {
		release()
		t.Fatalf("LockGrant(%q) succeeded while the lock is held", name)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockGrant(%q) while held: %v, want context.DeadlineExceeded", name, err)
	}
}

func (s *suite) accountLoadUnknown(t *testing.T) {
	_, as := s.newAccounts(t)
	ctx := t.Context()
	if a, err := as.LoadAccount(ctx, "nobody@example.com"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("LoadAccount of an unknown name = %+v, %v; want ErrNotFound", a, err)
	}
	if err := as.DeleteAccount(ctx, "nobody@example.com"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("DeleteAccount of an unknown name: %v, want ErrNotFound", err)
	}
	if list, err := as.ListAccounts(ctx); err != nil || len(list) != 0 {
		t.Errorf("ListAccounts of an empty store = %d records, %v", len(list), err)
	}
}

func (s *suite) accountRoundTrip(t *testing.T) {
	_, as := s.newAccounts(t)
	a := sampleAccount("alice@contoso.example")
	before := cloneAccount(a)
	putAccount(t, as, a)
	if d := diffAccount(a, func() *state.Account { b := cloneAccount(before); b.Version = 1; return b }()); d != "" {
		t.Errorf("PutAccount modified its argument: %s", d)
	}
	checkAccount(t, as, a)

	// A second version with less in it: fewer passwords, no grant, zero
	// times, empty strings.
	a.Passwords = a.Passwords[1:2]
	a.Passwords[0].LastUsed = at(9, 77)
	a.SealedGrant, a.ServerWrappedDEK = nil, nil
	a.GrantExpiry, a.GrantSince, a.GrantUpdated = time.Time{}, time.Time{}, time.Time{}
	a.GrantStatus, a.GrantReason, a.Mailbox = "ok", "", ""
	a.GrantVersion, a.DEKVersion = 0, 1<<63+5
	a.Kind = "app-only"
	putAccount(t, as, a)
	checkAccount(t, as, a)

	// And every password gone.
	a.Passwords = nil
	putAccount(t, as, a)
	checkAccount(t, as, a)
}

func (s *suite) accountConflict(t *testing.T) {
	_, as := s.newAccounts(t)
	ctx := t.Context()
	a := sampleAccount("alice")
	if _, err := as.PutAccount(ctx, &state.Account{Name: "alice", Version: 1}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("PutAccount of version 1 with nothing stored: %v, want ErrConflict", err)
	}
	putAccount(t, as, a)
	stored := cloneAccount(a)

	other := cloneAccount(a)
	other.Version = 0
	other.Identity = "mallory"
	if _, err := as.PutAccount(ctx, other); !errors.Is(err, state.ErrConflict) {
		t.Errorf("PutAccount of version 0 over a stored record: %v, want ErrConflict", err)
	}
	for _, v := range []uint64{2, 7, 1 << 63} {
		other.Version = v
		if _, err := as.PutAccount(ctx, other); !errors.Is(err, state.ErrConflict) {
			t.Errorf("PutAccount of version %d over version 1: %v, want ErrConflict", v, err)
		}
	}
	checkAccount(t, as, stored)

	// Two writers from one version: the first wins, the second conflicts.
	w1, w2 := cloneAccount(a), cloneAccount(a)
	w1.GrantStatus, w2.GrantStatus = "first", "second"
	putAccount(t, as, w1)
	if _, err := as.PutAccount(ctx, w2); !errors.Is(err, state.ErrConflict) {
		t.Errorf("second PutAccount from version 1: %v, want ErrConflict", err)
	}
	checkAccount(t, as, w1)
}

func (s *suite) accountList(t *testing.T) {
	_, as := s.newAccounts(t)
	names := []string{"bob@example.com", "alice@example.com", "Zed@example.com", "alice@example.co", "émile@example.com", "a"}
	want := map[string]*state.Account{}
	for i, n := range names {
		a := sampleAccount(n)
		a.Passwords = a.Passwords[:i%4]
		a.Identity = "identity of " + n
		putAccount(t, as, a)
		want[n] = a
	}
	list, err := as.ListAccounts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	var got []string
	for _, a := range list {
		got = append(got, a.Name)
		if w := want[a.Name]; w == nil {
			t.Errorf("ListAccounts returned unknown %q", a.Name)
		} else if d := diffAccount(a, w); d != "" {
			t.Errorf("ListAccounts: %q: %s", a.Name, d)
		}
	}
	if !slices.Equal(got, sorted) {
		t.Errorf("ListAccounts names %q, want %q (byte order)", got, sorted)
	}
}

func (s *suite) accountDelete(t *testing.T) {
	_, as := s.newAccounts(t)
	ctx := t.Context()
	a, b := sampleAccount("alice"), sampleAccount("bob")
	putAccount(t, as, a)
	putAccount(t, as, b)
	if err := as.DeleteAccount(ctx, "alice"); err != nil {
		t.Fatalf("DeleteAccount: %v", err)
	}
	if _, err := as.LoadAccount(ctx, "alice"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("LoadAccount after DeleteAccount: %v, want ErrNotFound", err)
	}
	if err := as.DeleteAccount(ctx, "alice"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second DeleteAccount: %v, want ErrNotFound", err)
	}
	checkAccount(t, as, b)
	// The name starts again from version 0, with nothing of the old record.
	fresh := &state.Account{Name: "alice", Kind: "app-only"}
	putAccount(t, as, fresh)
	checkAccount(t, as, fresh)
	if list, err := as.ListAccounts(ctx); err != nil || len(list) != 2 {
		t.Errorf("ListAccounts = %d records, %v; want 2", len(list), err)
	}
}

// accountRacers makes n goroutines each add a password of its own to one
// record through the given stores, retrying on ErrConflict, and checks
// that none is lost.
func accountRacers(t *testing.T, stores []state.AccountStore, n int) {
	t.Helper()
	ctx := t.Context()
	putAccount(t, stores[0], &state.Account{Name: "race", Kind: "delegated"})
	var wg sync.WaitGroup
	var conflicts atomic.Int64
	start := make(chan struct{})
	for i := range n {
		as := stores[i%len(stores)]
		wg.Go(func() {
			<-start
			for {
				a, err := as.LoadAccount(ctx, "race")
				if err != nil {
					t.Errorf("LoadAccount: %v", err)
					return
				}
				a.Passwords = append(a.Passwords, state.AppPassword{Label: fmt.Sprint("racer ", i), Hash: "h", WrappedDEK: []byte{byte(i)}})
				_, err = as.PutAccount(ctx, a)
				if errors.Is(err, state.ErrConflict) {
					conflicts.Add(1)
					runtime.Gosched()
					continue
				}
				if err != nil {
					t.Errorf("PutAccount: %v", err)
				}
				return
			}
		})
	}
	close(start)
	wg.Wait()
	a := loadAccount(t, stores[len(stores)-1], "race")
	if a.Version != uint64(n)+1 || len(a.Passwords) != n {
		t.Fatalf("after %d racers: version %d, %d passwords; want %d, %d", n, a.Version, len(a.Passwords), n+1, n)
	}
	var labels []string
	for _, p := range a.Passwords {
		labels = append(labels, p.Label)
	}
	slices.Sort(labels)
	if labels = slices.Compact(labels); len(labels) != n {
		t.Errorf("labels %q: some racer's password is missing or doubled", labels)
	}
	t.Logf("%d conflicts retried", conflicts.Load())
}

func (s *suite) accountRace(t *testing.T) {
	_, as := s.newAccounts(t)
	accountRacers(t, []state.AccountStore{as}, 8)
}

func (s *suite) accountApart(t *testing.T) {
	st, as := s.newAccounts(t)
	ctx := t.Context()
	k := state.ClientKey{Mailbox: "alice"}
	v := apply(t, st, "alice", 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "a")}})
	applyClient(t, st, k, state.ClientChange{Hide: []string{"u1"}})
	a := sampleAccount("alice")
	putAccount(t, as, a)
	checkMailbox(t, load(t, st, "alice"), v, markers1, []state.Entry{entry(1, "a")})
	if err := as.DeleteAccount(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	checkMailbox(t, load(t, st, "alice"), v, markers1, []state.Entry{entry(1, "a")})
	checkHidden(t, loadClient(t, st, k), "u1")
	// Grant locks and maildrop locks do not exclude each other.
	release := lock(t, st, k)
	lockGrant(t, as, "alice")()
	releaseGrant := lockGrant(t, as, "alice")
	lock(t, st, state.ClientKey{Mailbox: "alice", Client: "x"})()
	releaseGrant()
	release()
}

func (s *suite) accountReopen(t *testing.T) {
	open := s.newBacking(t)
	st := open()
	as := accounts(t, st)
	a := sampleAccount("alice")
	putAccount(t, as, a)
	release := lockGrant(t, as, "alice")
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	release() // harmless after Close

	as = accounts(t, open())
	checkAccount(t, as, a)
	// Close freed the grant lock, and the record goes on from its version.
	lockGrant(t, as, "alice")()
	a.Identity = "alice2"
	putAccount(t, as, a)
	checkAccount(t, as, a)
}

func (s *suite) grantLockExclusive(t *testing.T) {
	_, as := s.newAccounts(t)
	r1 := lockGrant(t, as, "alice")
	grantHeld(t, as, "alice")
	// Other names lock on their own, even ones a naive key would mix up.
	r2 := lockGrant(t, as, "bob")
	r3 := lockGrant(t, as, "Alice")
	r4 := lockGrant(t, as, "alice ")
	grantHeld(t, as, "bob")
	r1()
	r1() // again: frees nothing more
	r5 := lockGrant(t, as, "alice")
	r1() // stale: must not free the lock r5 holds
	grantHeld(t, as, "alice")
	for _, r := range []func(){r2, r3, r4, r5} {
		r()
	}
	for _, n := range []string{"alice", "bob", "Alice", "alice "} {
		lockGrant(t, as, n)()
	}
}

// grantLockWaits checks that a LockGrant waiting for a held lock gets it
// once the holder lets go, and not before.
func grantLockWaits(t *testing.T, holder, waiter state.AccountStore) {
	t.Helper()
	release := lockGrant(t, holder, "alice")
	var holding atomic.Bool
	holding.Store(true)
	got := make(chan error, 1)
	go func() {
		r, err := waiter.LockGrant(t.Context(), "alice")
		if err == nil {
			if holding.Load() {
				err = errors.New("acquired while the first holder still had the lock")
			}
			r()
		}
		got <- err
	}()
	grantHeld(t, holder, "alice") // some time passes while the waiter waits
	holding.Store(false)
	release()
	if err := <-got; err != nil {
		t.Errorf("waiting LockGrant: %v", err)
	}
}

func (s *suite) grantLockWaits(t *testing.T) {
	_, as := s.newAccounts(t)
	grantLockWaits(t, as, as)
}

func (s *suite) grantLockCancel(t *testing.T) {
	_, as := s.newAccounts(t)
	release := lockGrant(t, as, "alice")
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan error, 1)
	go func() {
		r, err := as.LockGrant(ctx, "alice")
		if err == nil {
			r()
		}
		got <- err
	}()
	grantHeld(t, as, "alice")
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Errorf("LockGrant whose context was cancelled while waiting: %v, want context.Canceled", err)
	}
	release()
	// The cancelled wait left nothing held.
	lockGrant(t, as, "alice")()
}

func (s *suite) grantLockMutual(t *testing.T) {
	_, as := s.newAccounts(t)
	grantLockMutual(t, []state.AccountStore{as}, 8)
}

// grantLockMutual makes n goroutines take the grant lock of one name
// through the given stores, and checks that no two hold it at once.
func grantLockMutual(t *testing.T, stores []state.AccountStore, n int) {
	t.Helper()
	var inside, entered atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		as := stores[i%len(stores)]
		wg.Go(func() {
			for range 3 {
				release, err := as.LockGrant(t.Context(), "alice")
				if err != nil {
					t.Errorf("LockGrant: %v", err)
					return
				}
				if k := inside.Add(1); k != 1 {
					t.Errorf("%d goroutines hold the grant lock at once", k)
				}
				entered.Add(1)
				runtime.Gosched()
				inside.Add(-1)
				release()
			}
		})
	}
	wg.Wait()
	if entered.Load() != int64(3*n) {
		t.Errorf("%d entries, want %d", entered.Load(), 3*n)
	}
}

func (s *suite) grantLockClose(t *testing.T) {
	st, as := s.newAccounts(t)
	release := lockGrant(t, as, "alice")
	got := make(chan error, 1)
	go func() {
		r, err := as.LockGrant(t.Context(), "alice")
		if err == nil {
			r()
		}
		got <- err
	}()
	grantHeld(t, as, "alice")
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-got; err == nil {
		t.Error("LockGrant waiting through a Store that was closed succeeded")
	}
	release()
	if r, err := as.LockGrant(t.Context(), "bob"); err == nil {
		r()
		t.Error("LockGrant after Close succeeded")
	}
}

func (s *suite) sharedAccounts(t *testing.T) {
	open := s.newBacking(t)
	a, b := accounts(t, open()), accounts(t, open())
	acc := sampleAccount("alice")
	putAccount(t, a, acc)
	checkAccount(t, b, acc)
	acc.Identity = "changed"
	putAccount(t, b, acc)
	checkAccount(t, a, acc)
	stale := cloneAccount(acc)
	stale.Version--
	if _, err := a.PutAccount(t.Context(), stale); !errors.Is(err, state.ErrConflict) {
		t.Errorf("PutAccount of a stale version through the other store: %v, want ErrConflict", err)
	}
	if err := a.DeleteAccount(t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.LoadAccount(t.Context(), "alice"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("LoadAccount after DeleteAccount through the other store: %v", err)
	}
}

func (s *suite) sharedAccountRace(t *testing.T) {
	open := s.newBacking(t)
	accountRacers(t, []state.AccountStore{accounts(t, open()), accounts(t, open())}, 8)
}

func (s *suite) sharedGrantLock(t *testing.T) {
	open := s.newBacking(t)
	stA, stB := open(), open()
	a, b := accounts(t, stA), accounts(t, stB)
	release := lockGrant(t, a, "alice")
	grantHeld(t, b, "alice")
	lockGrant(t, b, "bob")()
	release()
	grantLockWaits(t, a, b)
	grantLockWaits(t, b, a)
	grantLockMutual(t, []state.AccountStore{a, b, accounts(t, open())}, 9)

	// Closing a store frees the grant locks it holds, and ends the waits
	// through it.
	release = lockGrant(t, b, "alice")
	got := make(chan error, 1)
	go func() {
		r, err := a.LockGrant(t.Context(), "alice")
		if err == nil {
			r()
		}
		got <- err
	}()
	grantHeld(t, b, "alice")
	if err := stA.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-got; err == nil {
		t.Error("LockGrant waiting through a Store that was closed succeeded")
	}
	if err := stB.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	release()
	lockGrant(t, accounts(t, open()), "alice")()
}
