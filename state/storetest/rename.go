package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
)

// Checks of RenameMailbox, LockUpdate and Pending.Copied, registered by Run.

func rename(t *testing.T, st state.Store, from, to string) bool {
	t.Helper()
	ok, err := st.RenameMailbox(t.Context(), from, to)
	if err != nil {
		t.Fatalf("RenameMailbox(%q, %q): %v", from, to, err)
	}
	return ok
}

// clientOf is the state of one client record, to compare before and after.
type clientOf struct {
	hidden    []string
	pending   *state.Pending
	lastLogin time.Time
}

func (s *suite) mailboxRename(t *testing.T) {
	st := s.newStore(t)
	const from, to = "imap://alice@imap.example.org:993/INBOX", "upstream/default/alice@example.org/INBOX"
	entries := []state.Entry{entry(1, "a"), entry(7, "a"), entry(1<<32-1, "a")}
	v := apply(t, st, from, 0, state.MailboxChange{Markers: markers1, Put: entries})
	v = apply(t, st, from, v, state.MailboxChange{Markers: markers1})
	clients := map[string]clientOf{
		"":       {hidden: []string{"u1"}},
		"laptop": {hidden: []string{"u1", "u7"}, pending: &state.Pending{Policy: "move", Target: "Trash", UIDValidity: 9, UIDs: []uint32{7}, UIDLs: []string{"u7"}, Copied: []string{"u7"}, Created: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}},
		"phone":  {pending: &state.Pending{Policy: "flag", Flags: []string{`\Seen`}, UIDValidity: 9, UIDs: []uint32{1}, UIDLs: []string{"u1"}, Created: time.Unix(1_700_000_000, 0)}},
		"tablet": {lastLogin: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)},
	}
	for c, want := range clients {
		applyClient(t, st, state.ClientKey{Mailbox: from, Client: c}, state.ClientChange{Hide: want.hidden, SetPending: want.pending, LastLogin: want.lastLogin})
	}
	// Records whose names start like from's, or that the concatenation of
	// a mailbox and a client name could be confused with, stay.
	bystanders := []string{from + "x", from[:len(from)-1], "imap://alice@imap.example.org:993/INBOXlaptop"}
	for i, b := range bystanders {
		apply(t, st, b, 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(uint32(i+1), "b")}})
		applyClient(t, st, state.ClientKey{Mailbox: b, Client: "laptop"}, state.ClientChange{Hide: []string{"b" + fmt.Sprint(i)}})
	}
	applyClient(t, st, state.ClientKey{Mailbox: from[:len(from)-1], Client: "Xlaptop"}, state.ClientChange{Hide: []string{"z"}})

	if !rename(t, st, from, to) {
		t.Fatal("RenameMailbox of a record to a free name reported false")
	}
	checkMailbox(t, load(t, st, to), v, markers1, entries)
	checkMailbox(t, load(t, st, from), 0, state.Markers{}, nil)
	for c, want := range clients {
		got := loadClient(t, st, state.ClientKey{Mailbox: to, Client: c})
		checkHidden(t, got, want.hidden...)
		checkPending(t, got.Pending, want.pending)
		checkLastLogin(t, got, want.lastLogin)
		old := loadClient(t, st, state.ClientKey{Mailbox: from, Client: c})
		if len(old.Hidden) != 0 || old.Pending != nil || !old.LastLogin.IsZero() {
			t.Errorf("client %q is still under the old name: %+v", c, old)
		}
	}
	for i, b := range bystanders {
		checkMailbox(t, load(t, st, b), 1, markers1, []state.Entry{entry(uint32(i+1), "b")})
		checkHidden(t, loadClient(t, st, state.ClientKey{Mailbox: b, Client: "laptop"}), "b"+fmt.Sprint(i))
	}
	checkHidden(t, loadClient(t, st, state.ClientKey{Mailbox: from[:len(from)-1], Client: "Xlaptop"}), "z")

	// The record goes on from its version, under the new name only.
	if _, err := st.ApplyMailbox(t.Context(), to, 0, state.MailboxChange{}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("ApplyMailbox(to, base 0) after the rename: %v, want ErrConflict", err)
	}
	v = apply(t, st, to, v, state.MailboxChange{Markers: markers1, Delete: []uint32{7}})
	checkMailbox(t, load(t, st, to), v, markers1, []state.Entry{entry(1, "a"), entry(1<<32-1, "a")})
	apply(t, st, from, 0, state.MailboxChange{Markers: markers1})

	// Once is enough: from is taken by a new record now, and to exists.
	if rename(t, st, from, to) {
		t.Error("RenameMailbox onto an existing record reported true")
	}
	checkMailbox(t, load(t, st, to), v, markers1, []state.Entry{entry(1, "a"), entry(1<<32-1, "a")})
	checkMailbox(t, load(t, st, from), 1, markers1, nil)

	// Nothing to rename.
	if rename(t, st, "nowhere", "elsewhere") {
		t.Error("RenameMailbox of an unknown record reported true")
	}
	checkMailbox(t, load(t, st, "elsewhere"), 0, state.Markers{}, nil)

	// A name that has client records but no mailbox record is not free.
	apply(t, st, "src", 0, state.MailboxChange{Markers: markers1, Put: []state.Entry{entry(3, "s")}})
	applyClient(t, st, state.ClientKey{Mailbox: "dst", Client: "phone"}, state.ClientChange{Hide: []string{"d"}})
	if rename(t, st, "src", "dst") {
		t.Error("RenameMailbox onto a name with client records reported true")
	}
	checkMailbox(t, load(t, st, "src"), 1, markers1, []state.Entry{entry(3, "s")})
	checkMailbox(t, load(t, st, "dst"), 0, state.Markers{}, nil)
	checkHidden(t, loadClient(t, st, state.ClientKey{Mailbox: "dst", Client: "phone"}), "d")

	// Client records without a mailbox record are not renamed.
	if rename(t, st, "dst", "dst2") {
		t.Error("RenameMailbox of client records without a mailbox record reported true")
	}
	checkHidden(t, loadClient(t, st, state.ClientKey{Mailbox: "dst", Client: "phone"}), "d")
}

// mailboxRenameRace renames one record from several goroutines (through
// several stores when they share records): exactly one renames it.
func (s *suite) mailboxRenameRace(t *testing.T) {
	var stores []state.Store
	if s.opts.Shared {
		open := s.newBacking(t)
		stores = []state.Store{open(), open()}
	} else {
		stores = []state.Store{s.newStore(t)}
	}
	for round := range 5 {
		from, to := fmt.Sprintf("old-%d", round), fmt.Sprintf("new-%d", round)
		entries := []state.Entry{entry(1, "r"), entry(2, "r")}
		v := apply(t, stores[0], from, 0, state.MailboxChange{Markers: markers1, Put: entries})
		applyClient(t, stores[0], state.ClientKey{Mailbox: from, Client: "c"}, state.ClientChange{Hide: []string{"u"}})
		const n = 8
		var wins atomic.Int32
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				ok, err := stores[i%len(stores)].RenameMailbox(context.Background(), from, to)
				if err != nil {
					t.Errorf("RenameMailbox in goroutine %d: %v", i, err)
				}
				if ok {
					wins.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if w := wins.Load(); w != 1 {
			t.Errorf("round %d: %d goroutines renamed the record, want 1", round, w)
		}
		for _, st := range stores {
			checkMailbox(t, load(t, st, to), v, markers1, entries)
			checkMailbox(t, load(t, st, from), 0, state.Markers{}, nil)
			checkHidden(t, loadClient(t, st, state.ClientKey{Mailbox: to, Client: "c"}), "u")
		}
	}
}

func lockUpdate(t *testing.T, st state.Store, mailbox string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	release, err := st.LockUpdate(ctx, mailbox)
	if err != nil {
		t.Fatalf("LockUpdate(%q): %v", mailbox, err)
	}
	if release == nil {
		t.Fatalf("LockUpdate(%q) returned a nil release func", mailbox)
	}
	return release
}

// updateHeld checks that LockUpdate of mailbox through st waits while the
// lock is held: with a context that ends, it fails with the context's
// error.
func updateHeld(t *testing.T, st state.Store, mailbox string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	release, err := st.LockUpdate(ctx, mailbox)
	if err == nil {
		release()
		t.Fatalf("LockUpdate(%q) succeeded while the lock is held", mailbox)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockUpdate(%q) of a held lock: %v, want one wrapping context.DeadlineExceeded", mailbox, err)
	}
}

func (s *suite) lockUpdateExclusive(t *testing.T) {
	st := s.newStore(t)
	const mb = "upstream/default/alice/INBOX"
	release := lockUpdate(t, st, mb)
	updateHeld(t, st, mb)
	// Other mailboxes, and the maildrop locks of this one, are free.
	other := lockUpdate(t, st, mb+"x")
	md := lock(t, st, state.ClientKey{Mailbox: mb, Client: "phone"})
	md2 := lock(t, st, state.ClientKey{Mailbox: mb})
	updateHeld(t, st, mb)
	// A waiter gets the lock once it is released.
	got := make(chan func(), 1)
	go func() {
		r, err := st.LockUpdate(context.Background(), mb)
		if err != nil {
			t.Errorf("waiting LockUpdate: %v", err)
			r = func() {}
		}
		got <- r
	}()
	release()
	release() // twice is harmless
	r := <-got
	updateHeld(t, st, mb)
	// A stale release does not free the lock someone else took since.
	release()
	updateHeld(t, st, mb)
	r()
	lockUpdate(t, st, mb)()
	other()
	md()
	md2()
}

// lockUpdateMutex runs goroutines that each take the update lock of one
// mailbox (through several stores when they share locks) and check that
// nobody else is inside meanwhile.
func (s *suite) lockUpdateMutex(t *testing.T) {
	var stores []state.Store
	if s.opts.Shared {
		open := s.newBacking(t)
		stores = []state.Store{open(), open(), open()}
	} else {
		stores = []state.Store{s.newStore(t)}
	}
	const mb = "INBOX"
	var inside, most, entered atomic.Int32
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			for range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				release, err := stores[i%len(stores)].LockUpdate(ctx, mb)
				cancel()
				if err != nil {
					t.Errorf("LockUpdate in goroutine %d: %v", i, err)
					return
				}
				n := inside.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				entered.Add(1)
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				release()
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Errorf("%d goroutines held the update lock at once, want 1", m)
	}
	if e := entered.Load(); e != 60 {
		t.Errorf("%d entries into the lock, want 60", e)
	}
}

// sharedLockUpdateClose: closing a store frees the update locks it holds
// for the other stores.
func (s *suite) sharedLockUpdateClose(t *testing.T) {
	open := s.newBacking(t)
	a, b := open(), open()
	release := lockUpdate(t, b, "INBOX")
	updateHeld(t, a, "INBOX")
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	release()
	lockUpdate(t, a, "INBOX")()
}
