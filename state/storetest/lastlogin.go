package storetest

import (
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
)

// checkLastLogin fails t unless c's LastLogin is want to the microsecond,
// in UTC (the zero time for want zero).
func checkLastLogin(t *testing.T, c *state.Client, want time.Time) {
	t.Helper()
	want = want.Truncate(time.Microsecond)
	if !c.LastLogin.Equal(want) || (!want.IsZero() && c.LastLogin.Location() != time.UTC) {
		t.Errorf("LastLogin = %v, want %v in UTC", c.LastLogin, want.UTC())
	}
}

// clientLastLogin checks Client.LastLogin and ClientChange.LastLogin: a
// client never stored has none; a change sets it (to the microsecond, in
// UTC) and is kept by changes without it; a record holding only a last
// login outlives its hidden UIDLs and pending UPDATE; it survives a reopen,
// and a walk reports it.
func (s *suite) clientLastLogin(t *testing.T) {
	open := s.newBacking(t)
	st := open()
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	checkLastLogin(t, loadClient(t, st, k), time.Time{})

	// Nanoseconds and a zone other than UTC.
	t1 := time.Date(2026, 12, 3, 14, 5, 6, 123456789, time.FixedZone("CET", 3600))
	applyClient(t, st, k, state.ClientChange{LastLogin: t1})
	c := loadClient(t, st, k)
	checkLastLogin(t, c, t1)
	if len(c.Hidden) != 0 || c.Pending != nil {
		t.Errorf("a record with only a last login: %+v", *c)
	}

	// Changes without a last login keep it, also when they leave nothing
	// hidden and nothing pending.
	p := &state.Pending{Policy: "expunge", UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"u1"}, Created: t1}
	applyClient(t, st, k, state.ClientChange{Hide: []string{"u2"}, SetPending: p})
	applyClient(t, st, k, state.ClientChange{Unhide: []string{"u2"}, ClearPending: true})
	c = loadClient(t, st, k)
	checkLastLogin(t, c, t1)
	checkHidden(t, c)
	checkPending(t, c.Pending, nil)

	// A later login replaces it, in the same change as other fields.
	t2 := t1.Add(90*time.Minute + 7*time.Nanosecond)
	applyClient(t, st, k, state.ClientChange{LastLogin: t2, Unhide: []string{"nothing"}})
	checkLastLogin(t, loadClient(t, st, k), t2)

	// Other clients have none.
	for _, other := range clientKeys {
		if other != k {
			checkLastLogin(t, loadClient(t, st, other), time.Time{})
		}
	}
	k2 := state.ClientKey{Mailbox: "INBOX", Client: ""}
	applyClient(t, st, k2, state.ClientChange{Hide: []string{"u9"}})

	if ex, ok := st.(interface{ Unwrap() state.Store }); ok {
		if ex, ok := ex.Unwrap().(state.Exporter); ok {
			got := map[state.ClientKey]time.Time{}
			if err := ex.ForEachClient(t.Context(), func(k state.ClientKey, _ *state.Pending, last time.Time) error {
				got[k] = last
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || !got[k].Equal(t2.Truncate(time.Microsecond)) || !got[k2].IsZero() {
				t.Errorf("walked last logins %v, want %v for %+v and none for %+v", got, t2.UTC(), k, k2)
			}
		}
	}

	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st = open()
	checkLastLogin(t, loadClient(t, st, k), t2)
	checkLastLogin(t, loadClient(t, st, k2), time.Time{})
}
