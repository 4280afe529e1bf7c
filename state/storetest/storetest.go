// Package storetest is the conformance suite every state.Store
// implementation must pass.
//
// A store's own test hands Run a Backend, which makes one new, empty backing
// store (a file, a database schema) per subtest and returns a function that
// opens a Store on it. Calling that function again after Close opens the same
// backing store again, which is how the suite checks that records outlive a
// Store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) func() state.Store {
//			path := filepath.Join(t.TempDir(), "state.db")
//			return func() state.Store {
//				s, err := boltstore.Open(path, nil)
//				if err != nil {
//					t.Fatal(err)
//				}
//				return s
//			}
//		}, nil)
//	}
//
// The suite closes every Store it opens, exactly once; the Backend removes
// its backing store, typically with t.TempDir or t.Cleanup.
//
// Besides what the state.Store documentation says, the suite holds stores to
// these points, which the rest of popbridge may rely on:
//
//   - Entries of a mailbox without any, and Hidden of a client without any,
//     may be nil or empty (the suite compares lengths); Hidden only holds
//     true values.
//   - Pending comes back field by field, Created Equal to what was stored,
//     nanoseconds included; nil and empty slices count as equal. Entries
//     come back with their Digest. A client's LastLogin comes back in UTC,
//     truncated to the microsecond.
//   - The empty string is a valid mailbox name and client tag, and two
//     different ClientKeys never share a record or a lock, even when their
//     concatenations are equal.
//   - ApplyMailbox does not modify ch; the same UID twice in Put is no
//     error, the later one wins; the result is what state.Apply computes.
//   - A release function called again, even after the lock was taken anew
//     by another session, frees nothing; one called after Close is
//     harmless; Close frees the locks of the Store. The same holds for
//     update locks (LockUpdate), whose wait ends with an error wrapping
//     context.DeadlineExceeded when the context's deadline passes.
//   - RenameMailbox keeps names apart as the records do: a mailbox whose
//     name starts with the renamed one keeps its records.
//
// A store that implements state.AccountStore is held to it too (see
// account.go for what the suite adds to its documentation); for one that
// does not, those checks are skipped.
//
// Names used by the suite are valid UTF-8 without NUL bytes, so that stores
// keeping them in SQL text columns can pass; a store that takes any bytes
// should test that in its own package.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
)

// Backend prepares a new, empty backing store for one test and returns open,
// which opens a Store on it. open is called from the goroutine of the t given
// to Backend and reports failures with t.Fatal. The suite calls open again
// only after closing the earlier Store, unless Options.Shared is set.
type Backend func(t *testing.T) (open func() state.Store)

// Options describe what a Backend supports beyond the Store contract.
// A nil *Options is equivalent to a zero Options value.
type Options struct {
	// Shared reports that open may be called while an earlier Store of the
	// same backing store is still open, and that such Stores share records
	// and maildrop locks, as several popbridge processes on one PostgreSQL
	// database do. The suite then also checks updates, conflicts and locks
	// across two Stores. Leave it unset for a store that holds its backing
	// store exclusively (bbolt locks its file).
	Shared bool
	// BigMailbox is the number of entries of the big-mailbox test; 0 means
	// 100,000 (10,000 with go test -short).
	BigMailbox int
}

// Run runs the conformance suite against stores made by b, each check in a
// subtest of its own with a fresh backing store.
func Run(t *testing.T, b Backend, opts *Options) {
	s := &suite{backend: b}
	if opts != nil {
		s.opts = *opts
	}
	t.Run("Mailbox/LoadUnknown", s.mailboxLoadUnknown)
	t.Run("Mailbox/RoundTrip", s.mailboxRoundTrip)
	t.Run("Mailbox/PutOrder", s.mailboxPutOrder)
	t.Run("Mailbox/DeleteThenPut", s.mailboxDeleteThenPut)
	t.Run("Mailbox/Reset", s.mailboxReset)
	t.Run("Mailbox/Versions", s.mailboxVersions)
	t.Run("Mailbox/Conflict", s.mailboxConflict)
	t.Run("Mailbox/Race", s.mailboxRace)
	t.Run("Mailbox/Independent", s.mailboxIndependent)
	t.Run("Mailbox/Big", s.mailboxBig)
	t.Run("Mailbox/Model", s.mailboxModel)
	t.Run("Mailbox/Rename", s.mailboxRename)
	t.Run("Mailbox/RenameRace", s.mailboxRenameRace)
	t.Run("Client/LoadUnknown", s.clientLoadUnknown)
	t.Run("Client/HideUnhide", s.clientHideUnhide)
	t.Run("Client/Pending", s.clientPending)
	t.Run("Client/ClearThenSetPending", s.clientClearThenSetPending)
	t.Run("Client/Independent", s.clientIndependent)
	t.Run("Client/Concurrent", s.clientConcurrent)
	t.Run("Client/LastLogin", s.clientLastLogin)
	t.Run("Lock/Exclusive", s.lockExclusive)
	t.Run("Lock/ReleaseTwice", s.lockReleaseTwice)
	t.Run("Lock/Race", s.lockRace)
	t.Run("LockUpdate/Exclusive", s.lockUpdateExclusive)
	t.Run("LockUpdate/Mutex", s.lockUpdateMutex)
	t.Run("Reopen", s.reopen)
	if s.opts.Shared {
		t.Run("Shared/Records", s.sharedRecords)
		t.Run("Shared/Conflict", s.sharedConflict)
		t.Run("Shared/Lock", s.sharedLock)
		t.Run("Shared/LockUpdateClose", s.sharedLockUpdateClose)
	}
	s.runAccounts(t)
	s.runExport(t)
}

type suite struct {
	backend Backend
	opts    Options
}

// closeOnce makes sure the suite closes each Store exactly once, whether a
// test closes it itself or leaves that to the cleanup.
type closeOnce struct {
	state.Store
	once sync.Once
	err  error
}

// Unwrap returns the Store under test, for its optional interfaces.
func (c *closeOnce) Unwrap() state.Store { return c.Store }

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Store.Close() })
	return c.err
}

// newBacking makes a backing store for t and returns a function opening a
// Store on it; each Store is closed when t ends unless closed before.
func (s *suite) newBacking(t *testing.T) func() state.Store {
	t.Helper()
	open := s.backend(t)
	return func() state.Store {
		t.Helper()
		st := &closeOnce{Store: open()}
		t.Cleanup(func() {
			if err := st.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return st
	}
}

// newStore opens a Store on a fresh backing store.
func (s *suite) newStore(t *testing.T) state.Store {
	t.Helper()
	return s.newBacking(t)()
}

// Helpers that fail the test on an error. They call t.Fatal, so they are for
// the test goroutine only.

func load(t *testing.T, st state.Store, mailbox string) *state.Mailbox {
	t.Helper()
	m, err := st.LoadMailbox(t.Context(), mailbox)
	if err != nil {
		t.Fatalf("LoadMailbox(%q): %v", mailbox, err)
	}
	if m == nil {
		t.Fatalf("LoadMailbox(%q) returned nil and no error", mailbox)
	}
	return m
}

func apply(t *testing.T, st state.Store, mailbox string, base uint64, ch state.MailboxChange) uint64 {
	t.Helper()
	v, err := st.ApplyMailbox(t.Context(), mailbox, base, ch)
	if err != nil {
		t.Fatalf("ApplyMailbox(%q, base %d): %v", mailbox, base, err)
	}
	if v != base+1 {
		t.Fatalf("ApplyMailbox(%q, base %d) = version %d, want %d", mailbox, base, v, base+1)
	}
	return v
}

func loadClient(t *testing.T, st state.Store, k state.ClientKey) *state.Client {
	t.Helper()
	c, err := st.LoadClient(t.Context(), k)
	if err != nil {
		t.Fatalf("LoadClient(%+v): %v", k, err)
	}
	if c == nil {
		t.Fatalf("LoadClient(%+v) returned nil and no error", k)
	}
	return c
}

func applyClient(t *testing.T, st state.Store, k state.ClientKey, ch state.ClientChange) {
	t.Helper()
	if err := st.ApplyClient(t.Context(), k, ch); err != nil {
		t.Fatalf("ApplyClient(%+v): %v", k, err)
	}
}

func lock(t *testing.T, st state.Store, k state.ClientKey) func() {
	t.Helper()
	release, err := st.Lock(t.Context(), k)
	if err != nil {
		t.Fatalf("Lock(%+v): %v", k, err)
	}
	if release == nil {
		t.Fatalf("Lock(%+v) returned a nil release func", k)
	}
	return release
}

// lockHeld checks that k cannot be locked through st right now.
func lockHeld(t *testing.T, st state.Store, k state.ClientKey) {
	t.Helper()
	// Lock must answer at once; the deadline only keeps a broken store
	// from hanging the test.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	release, err := st.Lock(ctx, k)
	if err == nil {
		release()
		t.Fatalf("Lock(%+v) succeeded while the lock is held", k)
	}
	if !errors.Is(err, state.ErrLocked) {
		t.Fatalf("Lock(%+v) of a held lock: %v, want ErrLocked", k, err)
	}
}

// checkMailbox compares a loaded record with what it should hold.
func checkMailbox(t *testing.T, got *state.Mailbox, version uint64, markers state.Markers, entries []state.Entry) {
	t.Helper()
	if got.Version != version {
		t.Errorf("Version = %d, want %d", got.Version, version)
	}
	if got.Markers != markers {
		t.Errorf("Markers = %+v, want %+v", got.Markers, markers)
	}
	checkEntries(t, got.Entries, entries)
}

func checkEntries(t *testing.T, got, want []state.Entry) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Errorf("%d entries, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
			return
		}
	}
	if len(got) > len(want) {
		t.Errorf("extra entry %+v", got[len(want)])
	} else {
		t.Errorf("missing entry %+v", want[len(got)])
	}
}

// entry makes a distinct Entry for uid; tag varies the other fields, so a
// replaced entry can be told from the original. Every third UID has a
// Digest, as messages whose fingerprint another shares do.
func entry(uid uint32, tag string) state.Entry {
	e := state.Entry{
		UID:         uid,
		UIDL:        fmt.Sprintf("%08x6b076fcb%s", uid, tag),
		Size:        int64(uid)*131 + int64(len(tag)),
		Fingerprint: fmt.Sprintf("<%d.%s@example.org> 2026-03-01T12:00:00Z %d", uid, tag, uid*131),
	}
	if uid%3 == 0 {
		e.Digest = fmt.Sprintf("s:%d.%s", uid, tag)
	}
	return e
}

var markers1 = state.Markers{UIDValidity: 0x6b076fcb, UIDNext: 100, NumMessages: 42, HighestModSeq: 1<<40 + 7}

func (s *suite) mailboxLoadUnknown(t *testing.T) {
	st := s.newStore(t)
	m := load(t, st, "INBOX")
	if m.Version != 0 || m.Markers != (state.Markers{}) || len(m.Entries) != 0 {
		t.Errorf("LoadMailbox of an unknown mailbox = %+v, want the zero Mailbox", *m)
	}
}

func (s *suite) mailboxRoundTrip(t *testing.T) {
	st := s.newStore(t)
	const mb = "alice@imap.example.org/INBOX"

	// Markers with every field at its widest.
	wide := state.Markers{UIDValidity: 1<<32 - 1, UIDNext: 1<<32 - 1, NumMessages: 1<<32 - 1, HighestModSeq: 1<<64 - 1}
	v := apply(t, st, mb, 0, state.MailboxChange{
		Markers: wide,
		Put: []state.Entry{
			entry(1, "a"),
			entry(2, "a"),
			{UID: 3, UIDL: "x", Size: 0, Fingerprint: ""},
			{UID: 1<<32 - 1, UIDL: "max", Size: 1<<63 - 1, Fingerprint: "ünïcode ✓ and spaces"},
		},
	})
	want := []state.Entry{entry(1, "a"), entry(2, "a"), {UID: 3, UIDL: "x"}, {UID: 1<<32 - 1, UIDL: "max", Size: 1<<63 - 1, Fingerprint: "ünïcode ✓ and spaces"}}
	checkMailbox(t, load(t, st, mb), v, wide, want)

	// Put replaces an existing UID; Delete removes; Delete of absent UIDs
	// is no error; Markers are always written.
	v = apply(t, st, mb, v, state.MailboxChange{
		Markers: markers1,
		Delete:  []uint32{3, 4, 5, 1000},
		Put:     []state.Entry{entry(2, "b"), entry(10, "a")},
	})
	want = []state.Entry{entry(1, "a"), entry(2, "b"), entry(10, "a"), {UID: 1<<32 - 1, UIDL: "max", Size: 1<<63 - 1, Fingerprint: "ünïcode ✓ and spaces"}}
	checkMailbox(t, load(t, st, mb), v, markers1, want)

	// A change with only markers keeps the entries.
	m2 := state.Markers{UIDValidity: markers1.UIDValidity, UIDNext: 200}
	v = apply(t, st, mb, v, state.MailboxChange{Markers: m2})
	checkMailbox(t, load(t, st, mb), v, m2, want)

	// Deleting everything leaves a record with a version and no entries.
	v = apply(t, st, mb, v, state.MailboxChange{Markers: m2, Delete: []uint32{1, 2, 10, 1<<32 - 1}})
	checkMailbox(t, load(t, st, mb), v, m2, nil)
}

func (s *suite) mailboxPutOrder(t *testing.T) {
	st := s.newStore(t)
	var want []state.Entry
	for uid := uint32(1); uid <= 300; uid++ {
		want = append(want, entry(uid*7, "p"))
	}
	put := slices.Clone(want)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(put), func(i, j int) { put[i], put[j] = put[j], put[i] })
	orig := slices.Clone(put)
	v := apply(t, st, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: put})
	if !slices.Equal(put, orig) {
		t.Errorf("ApplyMailbox modified the caller's Put slice")
	}
	checkMailbox(t, load(t, st, "INBOX"), v, markers1, want)

	// The same UID twice in one Put: the later one wins.
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(7, "first"), entry(7, "second")}})
	want[0] = entry(7, "second")
	checkMailbox(t, load(t, st, "INBOX"), v, markers1, want)
}

func (s *suite) mailboxDeleteThenPut(t *testing.T) {
	st := s.newStore(t)
	v := apply(t, st, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "a"), entry(2, "a")}})
	// Delete applies before Put, so a UID in both ends up with the Put entry.
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: markers1, Delete: []uint32{1, 2}, Put: []state.Entry{entry(2, "b")}})
	checkMailbox(t, load(t, st, "INBOX"), v, markers1, []state.Entry{entry(2, "b")})
}

func (s *suite) mailboxReset(t *testing.T) {
	st := s.newStore(t)
	var old []state.Entry
	for uid := uint32(1); uid <= 50; uid++ {
		old = append(old, entry(uid, "old"))
	}
	v := apply(t, st, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: old})

	// UIDVALIDITY changed: every old entry goes, the new ones (some with
	// the old UIDs, one re-matched UIDL) stay.
	m2 := state.Markers{UIDValidity: markers1.UIDValidity + 1, UIDNext: 4, NumMessages: 3}
	kept := state.Entry{UID: 1, UIDL: old[9].UIDL, Size: old[9].Size, Fingerprint: old[9].Fingerprint}
	put := []state.Entry{entry(3, "new"), kept, entry(2, "new")}
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: m2, Reset: true, Delete: []uint32{5}, Put: put})
	checkMailbox(t, load(t, st, "INBOX"), v, m2, []state.Entry{kept, entry(2, "new"), entry(3, "new")})

	// Reset alone empties the record; Reset of an empty record is fine.
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: m2, Reset: true})
	checkMailbox(t, load(t, st, "INBOX"), v, m2, nil)
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: m2, Reset: true})
	checkMailbox(t, load(t, st, "INBOX"), v, m2, nil)

	// Reset on a mailbox never stored.
	v = apply(t, st, "Other", 0, state.MailboxChange{Markers: m2, Reset: true, Put: []state.Entry{entry(1, "x")}})
	checkMailbox(t, load(t, st, "Other"), v, m2, []state.Entry{entry(1, "x")})
}

func (s *suite) mailboxVersions(t *testing.T) {
	st := s.newStore(t)
	for base := range uint64(5) {
		v := apply(t, st, "INBOX", base, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(uint32(base)+1, "v")}})
		if got := load(t, st, "INBOX").Version; got != v {
			t.Fatalf("after ApplyMailbox returned version %d, LoadMailbox has version %d", v, got)
		}
	}
	// An empty change still counts as a change.
	apply(t, st, "INBOX", 5, state.MailboxChange{Markers: markers1})
	if got := load(t, st, "INBOX").Version; got != 6 {
		t.Errorf("Version = %d after an empty change, want 6", got)
	}
	// A store that offers state.Versioner agrees with LoadMailbox.
	if vs, ok := st.(interface{ Unwrap() state.Store }); ok {
		st = vs.Unwrap()
	}
	if vs, ok := st.(state.Versioner); ok {
		for name, want := range map[string]uint64{"INBOX": 6, "never stored": 0} {
			if got, err := vs.MailboxVersion(t.Context(), name); err != nil || got != want {
				t.Errorf("MailboxVersion(%q) = %d, %v; want %d", name, got, err, want)
			}
		}
	}
}

func (s *suite) mailboxConflict(t *testing.T) {
	st := s.newStore(t)
	ctx := t.Context()

	// A base other than 0 for a mailbox never stored.
	if _, err := st.ApplyMailbox(ctx, "INBOX", 1, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "x")}}); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("ApplyMailbox with base 1 on an unknown mailbox: %v, want ErrConflict", err)
	}
	if m := load(t, st, "INBOX"); m.Version != 0 || len(m.Entries) != 0 || m.Markers != (state.Markers{}) {
		t.Fatalf("a conflicting change was stored: %+v", *m)
	}

	v := apply(t, st, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "a"), entry(2, "a")}})
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(3, "a")}})
	before := load(t, st, "INBOX")

	stale := state.MailboxChange{
		Markers: state.Markers{UIDValidity: 9, UIDNext: 9},
		Reset:   true,
		Delete:  []uint32{1},
		Put:     []state.Entry{entry(1, "stale")},
	}
	for _, base := range []uint64{0, v - 1, v + 1, 1 << 63} {
		if _, err := st.ApplyMailbox(ctx, "INBOX", base, stale); !errors.Is(err, state.ErrConflict) {
			t.Errorf("ApplyMailbox with base %d, stored version %d: %v, want ErrConflict", base, v, err)
		}
	}
	checkMailbox(t, load(t, st, "INBOX"), before.Version, before.Markers, before.Entries)
}

func (s *suite) mailboxRace(t *testing.T) {
	st := s.newStore(t)
	racers(t, []state.Store{st}, 8)
}

// racers starts n goroutines that apply a change to the same mailbox from
// the same base through the given stores (round robin) and checks that
// exactly one wins and its change is the one stored.
func racers(t *testing.T, stores []state.Store, n int) {
	t.Helper()
	ctx := t.Context()
	const mb = "INBOX"
	base := apply(t, stores[0], mb, 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "base")}})

	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			ch := state.MailboxChange{
				Markers: state.Markers{UIDValidity: markers1.UIDValidity, UIDNext: uint32(100 + i)},
				Delete:  []uint32{1},
				Put:     []state.Entry{entry(uint32(100+i), "racer")},
			}
			_, errs[i] = stores[i%len(stores)].ApplyMailbox(ctx, mb, base, ch)
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("racers %d and %d both succeeded from base %d", winner, i, base)
		case err == nil:
			winner = i
		case !errors.Is(err, state.ErrConflict):
			t.Errorf("racer %d: %v, want nil or ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no racer succeeded: %v", errs)
	}
	for _, st := range stores {
		checkMailbox(t, load(t, st, mb), base+1,
			state.Markers{UIDValidity: markers1.UIDValidity, UIDNext: uint32(100 + winner)},
			[]state.Entry{entry(uint32(100+winner), "racer")})
	}
}

// names that must be told apart: prefixes of each other, case, separators,
// spaces, non-ASCII, and the empty name.
var names = []string{"INBOX", "inbox", "INBOX/Sub", "INBOX.Sub", "INBO", "INBOX ", " INBOX", "Boîte", "Boi\u0302te", "a#b", "", "alice@imap.example.org/INBOX"}

func (s *suite) mailboxIndependent(t *testing.T) {
	st := s.newStore(t)
	for i, name := range names {
		// Each mailbox gets a different number of changes and entries.
		var v uint64
		for j := 0; j <= i%3; j++ {
			v = apply(t, st, name, v, state.MailboxChange{
				Markers: state.Markers{UIDValidity: uint32(i + 1), UIDNext: uint32(j + 1)},
				Put:     []state.Entry{entry(uint32(j+1), name)},
			})
		}
	}
	for i, name := range names {
		var want []state.Entry
		for j := 0; j <= i%3; j++ {
			want = append(want, entry(uint32(j+1), name))
		}
		checkMailbox(t, load(t, st, name), uint64(i%3+1), state.Markers{UIDValidity: uint32(i + 1), UIDNext: uint32(i%3 + 1)}, want)
	}
	// A conflict on one leaves the others alone.
	if _, err := st.ApplyMailbox(t.Context(), names[0], 0, state.MailboxChange{Reset: true}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("stale ApplyMailbox: %v, want ErrConflict", err)
	}
	if m := load(t, st, "never stored"); m.Version != 0 || len(m.Entries) != 0 {
		t.Errorf("LoadMailbox of an unknown mailbox next to known ones = %+v", *m)
	}
}

func (s *suite) mailboxBig(t *testing.T) {
	n := s.opts.BigMailbox
	if n == 0 {
		n = 100_000
		if testing.Short() {
			n = 10_000
		}
	}
	st := s.newStore(t)
	want := make([]state.Entry, n)
	for i := range want {
		uid := uint32(2*i + 1)
		want[i] = state.Entry{
			UID:         uid,
			UIDL:        fmt.Sprintf("%08x6b076fcb", uid),
			Size:        int64(1000 + i%50_000),
			Fingerprint: fmt.Sprintf("<%d.%x@mail.example.org> 2026-03-01T12:%02d:00Z %d", i, i*7919, i%60, 1000+i%50_000),
		}
		if i%1000 == 0 {
			want[i].Digest = fmt.Sprintf("s:%043d", i)
		}
	}
	// Put in descending order, one change.
	put := slices.Clone(want)
	slices.Reverse(put)
	m1 := state.Markers{UIDValidity: 0x6b076fcb, UIDNext: uint32(2*n + 1), NumMessages: uint32(n)}
	v := apply(t, st, "INBOX", 0, state.MailboxChange{Markers: m1, Put: put})
	checkMailbox(t, load(t, st, "INBOX"), v, m1, want)

	// A small change to the big record: two expunged, three new.
	m2 := state.Markers{UIDValidity: 0x6b076fcb, UIDNext: uint32(2*n + 7), NumMessages: uint32(n + 1)}
	add := []state.Entry{entry(uint32(2*n+1), "new"), entry(uint32(2*n+3), "new"), entry(uint32(2*n+5), "new")}
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: m2, Delete: []uint32{want[0].UID, want[n/2].UID}, Put: add})
	want = slices.Delete(want, n/2, n/2+1)
	want = append(want[1:], add...)
	checkMailbox(t, load(t, st, "INBOX"), v, m2, want)
}

// mailboxModel applies random changes, stale ones among them, and checks
// the store against state.Apply, the reference semantics of a change.
func (s *suite) mailboxModel(t *testing.T) {
	st := s.newStore(t)
	ctx := t.Context()
	rng := rand.New(rand.NewPCG(7, 11))
	const maxUID = 60 // small, so that changes hit stored UIDs often
	want := &state.Mailbox{}
	for step := range 300 {
		ch := state.MailboxChange{
			Markers: state.Markers{UIDValidity: rng.Uint32N(3), UIDNext: rng.Uint32(), NumMessages: rng.Uint32N(100), HighestModSeq: rng.Uint64()},
			Reset:   rng.IntN(25) == 0,
		}
		for range rng.IntN(6) {
			ch.Delete = append(ch.Delete, 1+rng.Uint32N(maxUID))
		}
		for i := range rng.IntN(30) {
			ch.Put = append(ch.Put, entry(1+rng.Uint32N(maxUID), fmt.Sprint(step, ".", i)))
		}
		if rng.IntN(8) == 0 {
			// A stale or future base: a conflict, and nothing changes.
			base := want.Version + 1 + rng.Uint64N(3)
			if want.Version > 0 && rng.IntN(2) == 0 {
				base = rng.Uint64N(want.Version)
			}
			if _, err := st.ApplyMailbox(ctx, "INBOX", base, ch); !errors.Is(err, state.ErrConflict) {
				t.Fatalf("step %d: ApplyMailbox with base %d, stored version %d: %v, want ErrConflict", step, base, want.Version, err)
			}
		} else {
			v := apply(t, st, "INBOX", want.Version, ch)
			want = state.Apply(want, v, ch)
		}
		got := load(t, st, "INBOX")
		checkMailbox(t, got, want.Version, want.Markers, want.Entries)
		if t.Failed() {
			t.Fatalf("step %d: change %+v", step, ch)
		}
	}
}

func (s *suite) clientLoadUnknown(t *testing.T) {
	st := s.newStore(t)
	// A mailbox record does not make a client record.
	apply(t, st, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "a")}})
	for _, k := range []state.ClientKey{{Mailbox: "INBOX"}, {Mailbox: "INBOX", Client: "phone"}, {Mailbox: "Other", Client: "phone"}} {
		c := loadClient(t, st, k)
		if len(c.Hidden) != 0 || c.Pending != nil {
			t.Errorf("LoadClient(%+v) of an unknown client = %+v, want an empty Client", k, *c)
		}
	}
	// An empty change keeps the client empty.
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	applyClient(t, st, k, state.ClientChange{})
	applyClient(t, st, k, state.ClientChange{ClearPending: true, Unhide: []string{"nothing"}})
	if c := loadClient(t, st, k); len(c.Hidden) != 0 || c.Pending != nil {
		t.Errorf("LoadClient after empty changes = %+v, want an empty Client", *c)
	}
	// And a client record does not make a mailbox record.
	applyClient(t, st, state.ClientKey{Mailbox: "Only clients"}, state.ClientChange{Hide: []string{"u1"}})
	if m := load(t, st, "Only clients"); m.Version != 0 || len(m.Entries) != 0 {
		t.Errorf("LoadMailbox of a mailbox with only client records = %+v, want the zero Mailbox", *m)
	}
}

func checkHidden(t *testing.T, c *state.Client, want ...string) {
	t.Helper()
	var got []string
	for uidl, hidden := range c.Hidden {
		if hidden {
			got = append(got, uidl)
		} else {
			t.Errorf("Hidden[%q] = false; Hidden should only hold true values", uidl)
		}
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("Hidden = %q, want %q", got, want)
	}
}

func (s *suite) clientHideUnhide(t *testing.T) {
	st := s.newStore(t)
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}

	applyClient(t, st, k, state.ClientChange{Hide: []string{"000000016b076fcb", "000000026b076fcb", "000000036b076fcb"}})
	checkHidden(t, loadClient(t, st, k), "000000016b076fcb", "000000026b076fcb", "000000036b076fcb")

	// Hiding again is no error; unhiding what is not hidden neither.
	applyClient(t, st, k, state.ClientChange{Hide: []string{"000000016b076fcb", "a"}, Unhide: []string{"000000026b076fcb", "never hidden"}})
	checkHidden(t, loadClient(t, st, k), "000000016b076fcb", "000000036b076fcb", "a")

	// Unhide applies before Hide: a UIDL in both ends up hidden.
	applyClient(t, st, k, state.ClientChange{Hide: []string{"b"}, Unhide: []string{"b", "a"}})
	checkHidden(t, loadClient(t, st, k), "000000016b076fcb", "000000036b076fcb", "b")

	applyClient(t, st, k, state.ClientChange{Unhide: []string{"000000016b076fcb", "000000036b076fcb", "b"}})
	checkHidden(t, loadClient(t, st, k))

	// Many at once.
	var many []string
	for i := range 5000 {
		many = append(many, fmt.Sprintf("%08x6b076fcb", i+1))
	}
	applyClient(t, st, k, state.ClientChange{Hide: many})
	checkHidden(t, loadClient(t, st, k), many...)
}

func checkPending(t *testing.T, got, want *state.Pending) {
	t.Helper()
	switch {
	case want == nil && got == nil:
		return
	case want == nil:
		t.Errorf("Pending = %+v, want nil", *got)
		return
	case got == nil:
		t.Errorf("Pending = nil, want %+v", *want)
		return
	}
	if got.Policy != want.Policy || got.Target != want.Target || got.UIDValidity != want.UIDValidity ||
		!slices.Equal(got.Flags, want.Flags) || !slices.Equal(got.UIDs, want.UIDs) || !slices.Equal(got.UIDLs, want.UIDLs) ||
		!slices.Equal(got.Fingerprints, want.Fingerprints) || !slices.Equal(got.Digests, want.Digests) ||
		!got.Created.Equal(want.Created) || got.Attempts != want.Attempts || !slices.Equal(got.Copied, want.Copied) {
		t.Errorf("Pending = %+v\nwant      %+v", *got, *want)
	}
}

func (s *suite) clientPending(t *testing.T) {
	st := s.newStore(t)
	k := state.ClientKey{Mailbox: "INBOX", Client: "laptop"}
	p1 := &state.Pending{
		Policy:      "flag",
		Target:      "",
		Flags:       []string{`\Seen`, "$POP3Deleted"},
		UIDValidity: 0x6b076fcb,
		UIDs:        []uint32{1, 2, 1<<32 - 1},
		UIDLs:       []string{"000000016b076fcb", "000000026b076fcb", "ffffffff6b076fcb"},
		// Identities, with a digest for the twins only.
		Fingerprints: []string{"h:AAAA", "h:AAAA", "h:BBBB"},
		Digests:      []string{"s:one", "s:two", ""},
		// Nanoseconds and a zone other than UTC; compared with Equal.
		Created:  time.Date(2026, 3, 1, 12, 34, 56, 789012345, time.FixedZone("CET", 3600)),
		Attempts: 3,
	}
	applyClient(t, st, k, state.ClientChange{SetPending: p1, Hide: []string{"h1"}})
	c := loadClient(t, st, k)
	checkPending(t, c.Pending, p1)
	checkHidden(t, c, "h1")

	// SetPending replaces; Hide without pending fields keeps it.
	p2 := &state.Pending{
		Policy:      "move",
		Target:      "Papierkorb/Gelöscht",
		UIDValidity: 7,
		UIDs:        []uint32{42, 43},
		UIDLs:       []string{"0000002a00000007", "0000002b00000007"},
		Copied:      []string{"0000002b00000007"},
		Created:     time.Now(),
	}
	applyClient(t, st, k, state.ClientChange{SetPending: p2})
	applyClient(t, st, k, state.ClientChange{Hide: []string{"h2"}})
	c = loadClient(t, st, k)
	checkPending(t, c.Pending, p2)
	checkHidden(t, c, "h1", "h2")

	// ClearPending removes it and leaves Hidden alone.
	applyClient(t, st, k, state.ClientChange{ClearPending: true})
	c = loadClient(t, st, k)
	checkPending(t, c.Pending, nil)
	checkHidden(t, c, "h1", "h2")

	// A Pending with every field zero is still a Pending.
	p3 := &state.Pending{Policy: "expunge"}
	applyClient(t, st, k, state.ClientChange{SetPending: p3})
	c = loadClient(t, st, k)
	checkPending(t, c.Pending, p3)
	if c.Pending != nil && !c.Pending.Created.IsZero() {
		t.Errorf("zero Created came back as %v", c.Pending.Created)
	}
}

func (s *suite) clientClearThenSetPending(t *testing.T) {
	st := s.newStore(t)
	k := state.ClientKey{Mailbox: "INBOX"}
	old := &state.Pending{Policy: "expunge", UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"u1"}, Created: time.Unix(1_700_000_000, 0)}
	applyClient(t, st, k, state.ClientChange{SetPending: old})
	// ClearPending applies before SetPending: the new one stays.
	p := &state.Pending{Policy: "move", Target: "Trash", UIDValidity: 1, UIDs: []uint32{2, 3}, UIDLs: []string{"u2", "u3"}, Created: time.Unix(1_700_000_100, 5)}
	applyClient(t, st, k, state.ClientChange{ClearPending: true, SetPending: p})
	checkPending(t, loadClient(t, st, k).Pending, p)

	// Also on a client never stored.
	k2 := state.ClientKey{Mailbox: "INBOX", Client: "new"}
	applyClient(t, st, k2, state.ClientChange{ClearPending: true, SetPending: p})
	checkPending(t, loadClient(t, st, k2).Pending, p)
}

// clientKeys must be told apart, including pairs whose concatenations are
// equal.
var clientKeys = []state.ClientKey{
	{Mailbox: "INBOX", Client: ""},
	{Mailbox: "INBOX", Client: "phone"},
	{Mailbox: "INBOX", Client: "Phone"},
	{Mailbox: "INBOXp", Client: "hone"},
	{Mailbox: "INBOX#", Client: "phone"},
	{Mailbox: "INBOX", Client: "#phone"},
	{Mailbox: "ab", Client: "c"},
	{Mailbox: "a", Client: "bc"},
	{Mailbox: "", Client: "abc"},
	{Mailbox: "abc", Client: ""},
	{Mailbox: "Boîte", Client: "téléphone"},
}

func (s *suite) clientIndependent(t *testing.T) {
	st := s.newStore(t)
	for i, k := range clientKeys {
		ch := state.ClientChange{Hide: []string{fmt.Sprint("only-", i), "shared"}}
		if i%2 == 0 {
			ch.SetPending = &state.Pending{Policy: "hide", UIDValidity: uint32(i), UIDs: []uint32{uint32(i)}, UIDLs: []string{fmt.Sprint("only-", i)}}
		}
		applyClient(t, st, k, ch)
	}
	// Unhiding and clearing on one client touches no other.
	applyClient(t, st, clientKeys[0], state.ClientChange{Unhide: []string{"shared"}, ClearPending: true})
	for i, k := range clientKeys {
		c := loadClient(t, st, k)
		if i == 0 {
			checkHidden(t, c, "only-0")
			checkPending(t, c.Pending, nil)
			continue
		}
		checkHidden(t, c, fmt.Sprint("only-", i), "shared")
		var want *state.Pending
		if i%2 == 0 {
			want = &state.Pending{Policy: "hide", UIDValidity: uint32(i), UIDs: []uint32{uint32(i)}, UIDLs: []string{fmt.Sprint("only-", i)}}
		}
		checkPending(t, c.Pending, want)
	}
}

func (s *suite) clientConcurrent(t *testing.T) {
	st := s.newStore(t)
	ctx := t.Context()
	const perKey, rounds = 3, 10

	// Goroutines on different keys, several goroutines per key, each
	// hiding its own UIDLs: every Hide must survive, so ApplyClient must be
	// atomic per key and keys must not interfere.
	var wg sync.WaitGroup
	for _, k := range clientKeys {
		for g := range perKey {
			wg.Go(func() {
				for r := range rounds {
					ch := state.ClientChange{
						Hide:       []string{fmt.Sprintf("g%d-r%d", g, r)},
						SetPending: &state.Pending{Policy: "hide", UIDValidity: uint32(g), UIDs: []uint32{uint32(r)}},
					}
					if err := st.ApplyClient(ctx, k, ch); err != nil {
						t.Errorf("ApplyClient(%+v): %v", k, err)
						return
					}
				}
			})
		}
		// Readers at the same time.
		wg.Go(func() {
			for range rounds {
				if _, err := st.LoadClient(ctx, k); err != nil {
					t.Errorf("LoadClient(%+v): %v", k, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, k := range clientKeys {
		c := loadClient(t, st, k)
		var want []string
		for g := range perKey {
			for r := range rounds {
				want = append(want, fmt.Sprintf("g%d-r%d", g, r))
			}
		}
		checkHidden(t, c, want...)
		if c.Pending == nil || c.Pending.Policy != "hide" || len(c.Pending.UIDs) != 1 {
			t.Errorf("Pending of %+v = %+v, want the last one a goroutine set", k, c.Pending)
		}
	}
}

func (s *suite) lockExclusive(t *testing.T) {
	st := s.newStore(t)
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	release := lock(t, st, k)
	lockHeld(t, st, k)

	// Other clients of the same mailbox, and the same client of another
	// mailbox, lock on their own.
	others := []state.ClientKey{{Mailbox: "INBOX"}, {Mailbox: "INBOX", Client: "laptop"}, {Mailbox: "Other", Client: "phone"}, {Mailbox: "INBOXp", Client: "hone"}}
	var releases []func()
	for _, o := range others {
		releases = append(releases, lock(t, st, o))
	}
	for _, o := range others {
		lockHeld(t, st, o)
	}
	lockHeld(t, st, k)

	// The lock does not stop records from being read or written.
	applyClient(t, st, k, state.ClientChange{Hide: []string{"x"}})
	checkHidden(t, loadClient(t, st, k), "x")

	release()
	release = lock(t, st, k)
	lockHeld(t, st, k)
	release()
	for _, r := range releases {
		r()
	}
	for _, o := range append(others, k) {
		lock(t, st, o)()
	}
}

func (s *suite) lockReleaseTwice(t *testing.T) {
	st := s.newStore(t)
	k := state.ClientKey{Mailbox: "INBOX"}
	r1 := lock(t, st, k)
	r1()
	r1()
	// A stale release must not free the lock someone else took since.
	r2 := lock(t, st, k)
	r1()
	lockHeld(t, st, k)
	r2()
	r2()
	lock(t, st, k)()
}

func (s *suite) lockRace(t *testing.T) {
	st := s.newStore(t)
	lockRace(t, []state.Store{st}, 8)
}

// lockRace makes n goroutines lock the same key at once through the given
// stores, and checks that exactly one gets it.
func lockRace(t *testing.T, stores []state.Store, n int) {
	t.Helper()
	ctx := t.Context()
	k := state.ClientKey{Mailbox: "INBOX", Client: "race"}
	start := make(chan struct{})
	releases := make([]func(), n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			releases[i], errs[i] = stores[i%len(stores)].Lock(ctx, k)
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("goroutines %d and %d both hold the lock", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, state.ErrLocked):
			t.Errorf("Lock in goroutine %d: %v, want nil or ErrLocked", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("nobody got the lock: %v", errs)
	}
	for _, st := range stores {
		lockHeld(t, st, k)
	}
	for i, err := range errs {
		if err == nil {
			releases[i]()
		}
	}
	for _, st := range stores {
		lock(t, st, k)()
	}
}

func (s *suite) reopen(t *testing.T) {
	open := s.newBacking(t)
	st := open()
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	p := &state.Pending{Policy: "move", Target: "Trash", UIDValidity: 9, UIDs: []uint32{5}, UIDLs: []string{"u5"}, Created: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	entries := []state.Entry{entry(1, "a"), entry(5, "a")}
	v := apply(t, st, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: entries})
	v = apply(t, st, "INBOX", v, state.MailboxChange{Markers: markers1})
	applyClient(t, st, k, state.ClientChange{Hide: []string{"u1"}, SetPending: p})
	release := lock(t, st, k)
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Releasing a lock of a closed store is harmless.
	release()

	st = open()
	checkMailbox(t, load(t, st, "INBOX"), v, markers1, entries)
	c := loadClient(t, st, k)
	checkHidden(t, c, "u1")
	checkPending(t, c.Pending, p)
	// Closing the store freed its locks.
	release = lock(t, st, k)
	release()
	// And the record goes on from the stored version.
	if _, err := st.ApplyMailbox(t.Context(), "INBOX", 0, state.MailboxChange{}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("ApplyMailbox from base 0 after reopen: %v, want ErrConflict", err)
	}
	apply(t, st, "INBOX", v, state.MailboxChange{Markers: markers1})
}

func (s *suite) sharedRecords(t *testing.T) {
	open := s.newBacking(t)
	a, b := open(), open()
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	v := apply(t, a, "INBOX", 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(1, "a")}})
	checkMailbox(t, load(t, b, "INBOX"), v, markers1, []state.Entry{entry(1, "a")})
	v = apply(t, b, "INBOX", v, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(2, "b")}})
	checkMailbox(t, load(t, a, "INBOX"), v, markers1, []state.Entry{entry(1, "a"), entry(2, "b")})

	applyClient(t, a, k, state.ClientChange{Hide: []string{"u1"}})
	applyClient(t, b, k, state.ClientChange{Hide: []string{"u2"}})
	checkHidden(t, loadClient(t, a, k), "u1", "u2")
	checkHidden(t, loadClient(t, b, k), "u1", "u2")
}

func (s *suite) sharedConflict(t *testing.T) {
	open := s.newBacking(t)
	racers(t, []state.Store{open(), open()}, 8)
}

func (s *suite) sharedLock(t *testing.T) {
	open := s.newBacking(t)
	a, b := open(), open()
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	release := lock(t, a, k)
	lockHeld(t, b, k)
	lockHeld(t, a, k)
	// Another client locks through the other store.
	lock(t, b, state.ClientKey{Mailbox: "INBOX", Client: "laptop"})()
	release()
	release = lock(t, b, k)
	lockHeld(t, a, k)

	// Closing a store frees the locks it holds.
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	release()
	lock(t, a, k)()

	lockRace(t, []state.Store{a, open(), open()}, 9)
}
