package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
)

// TestStateListLastLogin: state list has a last_login column, in UTC to
// the second, "-" for a device whose record has none (it never logged in
// since popbridge records it); state show has it per device.
func TestStateListLastLogin(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	site := &stateSite{t: t, mem: mem, dir: t.TempDir()}
	path := filepath.Join(site.dir, "state.db")
	cfgPath := site.config("bolt", bridge.StateConfig{Driver: "bolt", Path: path})
	key, _, err := bridge.StateKey(mustConfig(t, cfgPath), mem.User+"#phone")
	if err != nil {
		t.Fatal(err)
	}
	mb := key.Mailbox

	st, err := boltstore.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := st.ApplyMailbox(ctx, mb, 0, state.MailboxChange{Markers: state.Markers{UIDValidity: 7, UIDNext: 3, NumMessages: 2},
		Put: []state.Entry{{UID: 1, UIDL: "u-1", Size: 10}, {UID: 2, UIDL: "u-2", Size: 20}}}); err != nil {
		t.Fatal(err)
	}
	cet := time.FixedZone("CET", 3600)
	for _, c := range []struct {
		client string
		ch     state.ClientChange
	}{
		{"", state.ClientChange{Hide: []string{"u-1"}}},
		{"phone", state.ClientChange{Hide: []string{"u-2"}, LastLogin: time.Date(2026, 12, 3, 14, 5, 6, 999999999, cet)}},
		{"tablet", state.ClientChange{LastLogin: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)}},
	} {
		if err := st.ApplyClient(ctx, state.ClientKey{Mailbox: mb, Client: c.client}, c.ch); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	out, err := runState(t, nil, "list", "-config", cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	want := "mailboxes:\n" +
		"  " + mb + "  entries=2 uidvalidity=7 uidnext=3 messages=2 version=1\n" +
		"clients:\n" +
		"  " + mb + `  device="" last_login=- hidden=1 pending=none` + "\n" +
		"  " + mb + `  device="phone" last_login=2026-12-03T13:05:06Z hidden=1 pending=none` + "\n" +
		"  " + mb + `  device="tablet" last_login=2026-12-03T09:00:00Z hidden=0 pending=none` + "\n"
	if out != want {
		t.Errorf("state list:\n%s\nwant:\n%s", out, want)
	}

	out, err = runState(t, nil, "show", "-config", cfgPath, mem.User+"#phone")
	if err != nil {
		t.Fatal(err)
	}
	want = "mailbox " + mb + "\n  uidvalidity=7 uidnext=3 messages=2 version=1\n" +
		`UIDLs as device "phone" sees them (UID UIDL SIZE):` + "\n  1 u-1 10\n" +
		`device "phone":` + "\n  last login: 2026-12-03T13:05:06Z\n  pending: none\n  hidden: 1\n    u-2\n"
	if out != want {
		t.Errorf("state show:\n%s\nwant:\n%s", out, want)
	}
	out, err = runState(t, nil, "show", "-config", cfgPath, mem.User)
	if err != nil {
		t.Fatal(err)
	}
	want = "mailbox " + mb + "\n  uidvalidity=7 uidnext=3 messages=2 version=1\n" +
		"UIDLs (UID UIDL SIZE):\n  1 u-1 10\n  2 u-2 20\n" +
		`device "":` + "\n  last login: -\n  pending: none\n  hidden: 1\n    u-1\n" +
		`device "phone":` + "\n  last login: 2026-12-03T13:05:06Z\n  pending: none\n  hidden: 1\n    u-2\n" +
		`device "tablet":` + "\n  last login: 2026-12-03T09:00:00Z\n  pending: none\n  hidden: 0\n"
	if out != want {
		t.Errorf("state show (every device):\n%s\nwant:\n%s", out, want)
	}
}

// TestStateShowMerged: state show of a login whose maildrop is merged
// shows, after its own mailbox, each other source as the merged maildrop
// lists it (its number, the merged UIDLs less what this device hid there)
// and the device's record in that source.
func TestStateShowMerged(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	site := &stateSite{t: t, mem: mem, dir: t.TempDir()}
	path := filepath.Join(site.dir, "state.db")
	cfgPath := site.config("bolt", bridge.StateConfig{Driver: "bolt", Path: path})
	cfg := mustConfig(t, cfgPath)
	key, _, err := bridge.StateKey(cfg, mem.User+"#phone")
	if err != nil {
		t.Fatal(err)
	}
	mb := key.Mailbox
	junk := strings.TrimSuffix(mb, "INBOX") + "Junk"
	st, err := boltstore.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, r := range []struct {
		name string
		ch   state.MailboxChange
	}{
		{mb, state.MailboxChange{Markers: state.Markers{UIDValidity: 7, UIDNext: 2, NumMessages: 1}, Put: []state.Entry{{UID: 1, UIDL: "u-1", Size: 10}}}},
		{junk, state.MailboxChange{Markers: state.Markers{UIDValidity: 9, UIDNext: 3, NumMessages: 2}, Put: []state.Entry{{UID: 1, UIDL: "j-1", Size: 30}, {UID: 2, UIDL: "j-2", Size: 40}}}},
		{bridge.MergedSources(mb), state.MailboxChange{Markers: state.Markers{UIDNext: 2, NumMessages: 1}, Put: []state.Entry{{UID: 1, UIDL: junk}}}},
	} {
		if _, err := st.ApplyMailbox(ctx, r.name, 0, r.ch); err != nil {
			t.Fatal(err)
		}
	}
	when := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	if err := st.ApplyClient(ctx, state.ClientKey{Mailbox: mb, Client: "phone"}, state.ClientChange{LastLogin: when}); err != nil {
		t.Fatal(err)
	}
	if err := st.ApplyClient(ctx, state.ClientKey{Mailbox: junk, Client: bridge.MergedClient("phone", mb)}, state.ClientChange{Hide: []string{"j-1"}, LastLogin: when}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	out, err := runState(t, nil, "show", "-config", cfgPath, mem.User+"#phone")
	if err != nil {
		t.Fatal(err)
	}
	want := "mailbox " + mb + "\n  uidvalidity=7 uidnext=2 messages=1 version=1\n" +
		`UIDLs as device "phone" sees them (UID UIDL SIZE):` + "\n  1 u-1 10\n" +
		"merged source 1: mailbox " + junk + "\n  uidvalidity=9 uidnext=3 messages=2 version=1\n" +
		`UIDLs as device "phone" sees them (UID UIDL SIZE):` + "\n  2 s1-j-2 40\n" +
		`device "phone":` + "\n  last login: 2026-12-03T09:00:00Z\n  pending: none\n  hidden: 0\n" +
		`device "phone" in merged source 1:` + "\n  last login: 2026-12-03T09:00:00Z\n  pending: none\n  hidden: 1\n    j-1\n"
	if out != want {
		t.Errorf("state show of a merged maildrop:\n%s\nwant:\n%s", out, want)
	}
}
