package storetest

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
)

// runExport runs the checks of state.Exporter and of the tools built on
// it (state.Export, state.Import, state.Check): a walk yields every record
// once and nothing else, an export imported into a new backing store gives
// the same records, and Check finds the problems planted with the store's
// own API and none in a store without them.
func (s *suite) runExport(t *testing.T) {
	t.Run("Export/Walk", s.exportWalk)
	t.Run("Export/RoundTrip", s.exportRoundTrip)
	t.Run("Export/Check", s.exportCheck)
	t.Run("Export/OldDump", s.exportOldDump)
}

// exporter returns the Exporter of st, or skips t.
func exporter(t *testing.T, st state.Store) state.Exporter {
	t.Helper()
	if c, ok := st.(*closeOnce); ok {
		st = c.Store
	}
	ex, ok := st.(state.Exporter)
	if !ok {
		t.Skip("the store does not implement state.Exporter")
	}
	return ex
}

// exportFixture stores two mailbox records (one with more entries than an
// import batch, one without entries) and four client records (one holding
// only a last login), and returns the client keys.
func exportFixture(t *testing.T, st state.Store) []state.ClientKey {
	t.Helper()
	big := state.MailboxChange{Markers: state.Markers{UIDValidity: 7, UIDNext: 5000, NumMessages: 2500, HighestModSeq: 99}}
	for i := range 2500 {
		uid := uint32(2*i + 1)
		d := ""
		if i%500 == 0 {
			d = fmt.Sprintf("sha256:%064d", i)
		}
		big.Put = append(big.Put, state.Entry{UID: uid, UIDL: fmt.Sprintf("u-%d", uid), Size: int64(100 + i), Fingerprint: fmt.Sprintf("fp%d", i%1000), Digest: d})
	}
	apply(t, st, "upstream/x/alice/INBOX", 0, big)
	apply(t, st, "upstream/x/bob/INBOX", 0, state.MailboxChange{Markers: state.Markers{UIDValidity: 3, UIDNext: 1}})
	keys := []state.ClientKey{
		{Mailbox: "upstream/x/alice/INBOX", Client: ""},
		{Mailbox: "upstream/x/alice/INBOX", Client: "phone"},
		{Mailbox: "upstream/x/bob/INBOX", Client: "scanner"},
		{Mailbox: "upstream/x/bob/INBOX", Client: "tablet"},
	}
	created := time.Date(2026, 3, 4, 5, 6, 7, 891011, time.UTC)
	changes := []state.ClientChange{
		{Hide: []string{"u-1", "u-3", "u-5"}, LastLogin: time.Date(2026, 3, 4, 6, 0, 0, 123456000, time.UTC)},
		{SetPending: &state.Pending{Policy: "move", Target: "Trash", UIDValidity: 7, UIDs: []uint32{7, 9}, UIDLs: []string{"u-7", "u-9"},
			Fingerprints: []string{"fp3", "fp4"}, Digests: []string{"", ""}, Created: created, Attempts: 2, Copied: []string{"u-7"}}},
		{Hide: []string{"gone-1"}, SetPending: &state.Pending{Policy: "hide", UIDValidity: 3, Created: created}},
		{LastLogin: time.Date(2026, 3, 5, 0, 0, 1, 0, time.UTC)},
	}
	for i, k := range keys {
		if err := st.ApplyClient(t.Context(), k, changes[i]); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func (s *suite) exportWalk(t *testing.T) {
	st := s.newStore(t)
	ex := exporter(t, st)
	keys := exportFixture(t, st)
	mailboxes := map[string]state.Markers{}
	if err := ex.ForEachMailbox(t.Context(), func(name string, version uint64, mk state.Markers) error {
		if _, dup := mailboxes[name]; dup {
			t.Errorf("mailbox %q walked twice", name)
		}
		if version != 1 {
			t.Errorf("mailbox %q: version %d, want 1", name, version)
		}
		mailboxes[name] = mk
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(mailboxes) != 2 || mailboxes["upstream/x/alice/INBOX"].HighestModSeq != 99 || mailboxes["upstream/x/bob/INBOX"].UIDValidity != 3 {
		t.Errorf("mailboxes walked: %+v", mailboxes)
	}
	for _, name := range []string{"upstream/x/alice/INBOX", "upstream/x/bob/INBOX", "no/such"} {
		var got []state.Entry
		if err := ex.ForEachEntry(t.Context(), name, func(e state.Entry) error { got = append(got, e); return nil }); err != nil {
			t.Fatal(err)
		}
		if want := load(t, st, name).Entries; len(got) != len(want) || (len(got) > 0 && !reflect.DeepEqual(got, want)) {
			t.Errorf("entries of %q: %d walked, %d loaded, or they differ", name, len(got), len(want))
		}
	}
	var walked []state.ClientKey
	if err := ex.ForEachClient(t.Context(), func(k state.ClientKey, p *state.Pending, lastLogin time.Time) error {
		walked = append(walked, k)
		c := loadClient(t, st, k)
		if !samePending(p, c.Pending) {
			t.Errorf("client %+v: pending walked %+v, loaded %+v", k, p, c.Pending)
		}
		if !lastLogin.Equal(c.LastLogin) {
			t.Errorf("client %+v: last login walked %v, loaded %v", k, lastLogin, c.LastLogin)
		}
		var hidden []string
		if err := ex.ForEachHidden(t.Context(), k, func(u string) error { hidden = append(hidden, u); return nil }); err != nil {
			return err
		}
		if len(hidden) != len(c.Hidden) {
			t.Errorf("client %+v: %d hidden walked, %d loaded", k, len(hidden), len(c.Hidden))
		}
		for _, u := range hidden {
			if !c.Hidden[u] {
				t.Errorf("client %+v: hidden %q walked, not loaded", k, u)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(walked, func(a, b state.ClientKey) int {
		return strings.Compare(a.Mailbox+"\x00"+a.Client, b.Mailbox+"\x00"+b.Client)
	})
	if !slices.Equal(walked, keys) {
		t.Errorf("clients walked %q, want %q", walked, keys)
	}
	// An error from fn ends the walk and is returned.
	stop := fmt.Errorf("stop")
	n := 0
	if err := ex.ForEachEntry(t.Context(), "upstream/x/alice/INBOX", func(state.Entry) error { n++; return stop }); err == nil || n != 1 {
		t.Errorf("ForEachEntry after fn failed: %v, %d calls", err, n)
	}
}

func samePending(a, b *state.Pending) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Policy == b.Policy && a.Target == b.Target && slices.Equal(a.Flags, b.Flags) && a.UIDValidity == b.UIDValidity &&
		slices.Equal(a.UIDs, b.UIDs) && slices.Equal(a.UIDLs, b.UIDLs) && slices.Equal(a.Fingerprints, b.Fingerprints) &&
		slices.Equal(a.Digests, b.Digests) && a.Created.Equal(b.Created) && a.Attempts == b.Attempts && slices.Equal(a.Copied, b.Copied)
}

func (s *suite) exportRoundTrip(t *testing.T) {
	src := s.newStore(t)
	keys := exportFixture(t, src)
	var dump bytes.Buffer
	stats, err := state.Export(t.Context(), exporter(t, src), &dump)
	if err != nil {
		t.Fatal(err)
	}
	if want := (state.DumpStats{Mailboxes: 2, Entries: 2500, Clients: 4, Hidden: 4, Pending: 2}); stats != want {
		t.Errorf("export: %+v, want %+v", stats, want)
	}
	dst := s.newStore(t)
	istats, err := state.Import(t.Context(), dst, bytes.NewReader(dump.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if istats != stats {
		t.Errorf("import read %+v, export wrote %+v", istats, stats)
	}
	for _, name := range []string{"upstream/x/alice/INBOX", "upstream/x/bob/INBOX"} {
		a, b := load(t, src, name), load(t, dst, name)
		if a.Markers != b.Markers || len(a.Entries) != len(b.Entries) || (len(a.Entries) > 0 && !reflect.DeepEqual(a.Entries, b.Entries)) {
			t.Errorf("mailbox %q differs after the round trip: markers %+v / %+v, %d / %d entries", name, a.Markers, b.Markers, len(a.Entries), len(b.Entries))
		}
		if b.Version == 0 {
			t.Errorf("mailbox %q not stored", name)
		}
	}
	for _, k := range keys {
		a, b := loadClient(t, src, k), loadClient(t, dst, k)
		if !samePending(a.Pending, b.Pending) || !reflect.DeepEqual(a.Hidden, b.Hidden) || !a.LastLogin.Equal(b.LastLogin) || a.LastLogin.IsZero() != (k.Client == "phone" || k.Client == "scanner") {
			t.Errorf("client %+v differs after the round trip: %+v / %+v", k, a, b)
		}
	}
	// The same dump again: the records exist, nothing is overwritten.
	if _, err := state.Import(t.Context(), dst, bytes.NewReader(dump.Bytes())); err == nil || !strings.Contains(err.Error(), "already has a record") {
		t.Errorf("importing over existing records: %v", err)
	}
	if n, err := state.Check(t.Context(), exporter(t, dst), func(p state.Problem) { t.Errorf("problem after import: %v", p) }); n != 0 || err != nil {
		t.Errorf("check after import: %d problems, %v", n, err)
	}
}

func (s *suite) exportCheck(t *testing.T) {
	st := s.newStore(t)
	ex := exporter(t, st)
	exportFixture(t, st)
	var got []string
	report := func(p state.Problem) { got = append(got, p.String()) }
	if n, err := state.Check(t.Context(), ex, report); n != 0 || err != nil {
		t.Fatalf("check of a sound store: %d problems %q, %v", n, got, err)
	}
	// Planted with the store's API: a UIDL given twice, a UID at UIDNEXT,
	// a client record without a mailbox record, a pending UIDL never seen.
	m := load(t, st, "upstream/x/bob/INBOX")
	apply(t, st, "upstream/x/bob/INBOX", m.Version, state.MailboxChange{Markers: state.Markers{UIDValidity: 3, UIDNext: 10, NumMessages: 3},
		Put: []state.Entry{{UID: 1, UIDL: "same"}, {UID: 2, UIDL: "same"}, {UID: 10, UIDL: "late"}}})
	if err := st.ApplyClient(t.Context(), state.ClientKey{Mailbox: "upstream/x/nobody/INBOX", Client: "x"}, state.ClientChange{Hide: []string{"u"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.ApplyClient(t.Context(), state.ClientKey{Mailbox: "upstream/x/bob/INBOX", Client: "scanner"}, state.ClientChange{
		SetPending: &state.Pending{Policy: "expunge", UIDValidity: 3, UIDs: []uint32{99}, UIDLs: []string{"never"}, Created: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	n, err := state.Check(t.Context(), ex, report)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`mailbox "upstream/x/bob/INBOX": UIDL "same" is given to UID 1 and UID 2`,
		`mailbox "upstream/x/bob/INBOX": UID 10 is not below the record's UIDNEXT 10`,
		`client "x" of mailbox "upstream/x/nobody/INBOX": orphaned: its mailbox has no record`,
		`client "scanner" of mailbox "upstream/x/bob/INBOX": pending UIDL "never" (UID 99) is neither in the mailbox record nor below its UIDNEXT 10`,
	}
	slices.Sort(got)
	slices.Sort(want)
	if n != len(want) || !slices.Equal(got, want) {
		t.Errorf("check found %d problems:\n%s\nwant:\n%s", n, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// exportOldDump imports a dump written before client records had a last
// login: it imports, and its clients have none.
func (s *suite) exportOldDump(t *testing.T) {
	dump := `{"kind":"popbridge-state","format":1}
{"kind":"mailbox","name":"upstream/x/alice/INBOX","uidvalidity":7,"uidnext":3,"messages":1}
{"kind":"entry","uid":2,"uidl":"u-2","size":120,"fingerprint":"fp2"}
{"kind":"client","mailbox":"upstream/x/alice/INBOX","client":"phone"}
{"kind":"hidden","uidl":"u-2"}
`
	st := s.newStore(t)
	stats, err := state.Import(t.Context(), st, strings.NewReader(dump))
	if err != nil {
		t.Fatal(err)
	}
	if want := (state.DumpStats{Mailboxes: 1, Entries: 1, Clients: 1, Hidden: 1}); stats != want {
		t.Errorf("import: %+v, want %+v", stats, want)
	}
	c := loadClient(t, st, state.ClientKey{Mailbox: "upstream/x/alice/INBOX", Client: "phone"})
	checkHidden(t, c, "u-2")
	checkLastLogin(t, c, time.Time{})
	// Exported again, the dump is the same: no last_login field for none.
	var again bytes.Buffer
	if _, err := state.Export(t.Context(), exporter(t, st), &again); err != nil {
		t.Fatal(err)
	}
	if again.String() != dump {
		t.Errorf("export of an old dump's records:\n%s\nwant:\n%s", again.String(), dump)
	}
}
