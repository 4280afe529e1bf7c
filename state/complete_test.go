package state

import (
	"slices"
	"testing"
)

// cheapRecord is a record as the cheap first listing stores it: UIDLs, no
// fingerprints.
func cheapRecord(uv uint32, n int) *Mailbox {
	m := &Mailbox{Version: 1, Markers: Markers{UIDValidity: uv, UIDNext: uint32(n) + 1, NumMessages: uint32(n)}}
	for i := 1; i <= n; i++ {
		m.Entries = append(m.Entries, Entry{UID: uint32(i), UIDL: uidlOf(uv)(uint32(i)), Size: 100})
	}
	return m
}

// TestCompletionWindow: a UIDVALIDITY change while fingerprints are missing
// gives the messages without one new UIDLs (never an old one), and the
// fingerprinted ones keep theirs; once every fingerprint is stored, a
// change keeps every UIDL.
func TestCompletionWindow(t *testing.T) {
	const uv, uv2 = 7, 8
	fps := map[uint32]string{1: "F1", 2: "F2", 3: "F3", 4: "F4"}
	// After the change, the same four messages come back in reverse order.
	relisted := []Listed{{UID: 1, Size: 100, Fingerprint: "F4"}, {UID: 2, Size: 100, Fingerprint: "F3"}, {UID: 3, Size: 100, Fingerprint: "F2"}, {UID: 4, Size: 100, Fingerprint: "F1"}}
	m := cheapRecord(uv, 4)
	if got := Unfingerprinted(m); !slices.Equal(got, []uint32{1, 2, 3, 4}) {
		t.Fatalf("Unfingerprinted = %v", got)
	}
	old := map[string]uint32{} // UIDL → old UID
	for _, e := range m.Entries {
		old[e.UIDL] = e.UID
	}

	// Half done: UIDs 1 and 2 have their fingerprints.
	ch, ok := AddFingerprints(m, uv, map[uint32]string{1: fps[1], 2: fps[2]})
	if !ok || len(ch.Put) != 2 || ch.Markers != m.Markers || ch.Reset {
		t.Fatalf("AddFingerprints = %+v, %v", ch, ok)
	}
	half := Apply(m, 2, ch)
	if got := Unfingerprinted(half); !slices.Equal(got, []uint32{3, 4}) {
		t.Fatalf("Unfingerprinted after half = %v", got)
	}
	rch, st := Rematch(half, Markers{UIDValidity: uv2}, relisted, nil, uidlOf(uv2))
	if st != (RematchStats{Matched: 2, New: 2, Gone: 2}) {
		t.Errorf("stats in the window = %+v", st)
	}
	for _, e := range rch.Put {
		was, reused := old[e.UIDL]
		switch fp := e.Fingerprint; fp {
		case "F1", "F2":
			if want := uidlOf(uv)(map[string]uint32{"F1": 1, "F2": 2}[fp]); e.UIDL != want {
				t.Errorf("fingerprinted message %s got UIDL %s, want its own %s", fp, e.UIDL, want)
			}
		default:
			if reused {
				t.Errorf("message %s without a stored fingerprint got the old UIDL %s (of old UID %d)", fp, e.UIDL, was)
			}
		}
	}

	// Complete: every UIDL survives the change.
	ch, ok = AddFingerprints(half, uv, fps)
	if !ok || len(ch.Put) != 2 {
		t.Fatalf("AddFingerprints of the rest = %+v, %v", ch, ok)
	}
	full := Apply(half, 3, ch)
	if got := Unfingerprinted(full); len(got) != 0 {
		t.Fatalf("Unfingerprinted after all = %v", got)
	}
	rch, st = Rematch(full, Markers{UIDValidity: uv2}, relisted, nil, uidlOf(uv2))
	if st != (RematchStats{Matched: 4}) {
		t.Errorf("stats after completion = %+v", st)
	}
	for _, e := range rch.Put {
		if want := full.Entries[5-e.UID-1].UIDL; e.UIDL != want {
			t.Errorf("new UID %d (%s) got UIDL %s, want %s", e.UID, e.Fingerprint, e.UIDL, want)
		}
	}
}

// TestAddFingerprintsOtherUIDValidity: fingerprints taken under another
// UIDVALIDITY name other messages and are not stored; nor is a stored
// fingerprint replaced.
func TestAddFingerprintsOtherUIDValidity(t *testing.T) {
	m := cheapRecord(7, 2)
	if ch, ok := AddFingerprints(m, 8, map[uint32]string{1: "F"}); ok || len(ch.Put) != 0 {
		t.Errorf("fingerprints of UIDVALIDITY 8 stored in a record of 7: %+v", ch)
	}
	m.Entries[0].Fingerprint = "kept"
	ch, ok := AddFingerprints(m, 7, map[uint32]string{1: "other", 2: "G", 9: "H"})
	if !ok || len(ch.Put) != 1 || ch.Put[0].UID != 2 || ch.Put[0].Fingerprint != "G" || ch.Put[0].UIDL != m.Entries[1].UIDL {
		t.Errorf("AddFingerprints = %+v", ch.Put)
	}
	if _, ok := AddFingerprints(&Mailbox{}, 0, map[uint32]string{1: "F"}); ok {
		t.Error("fingerprints stored in a record that does not exist")
	}
}

// TestCompletedTwinsGetDigests: once the fingerprints are complete, the
// entries that share one get their digests, and a UIDVALIDITY change then
// tells them apart; before, they are never guessed.
func TestCompletedTwinsGetDigests(t *testing.T) {
	const uv, uv2 = 7, 8
	m := cheapRecord(uv, 3)
	ch, _ := AddFingerprints(m, uv, map[uint32]string{1: "T", 2: "T", 3: "U"})
	m = Apply(m, 2, ch)
	if got := DigestsMissing(m); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("DigestsMissing = %v", got)
	}
	// The twins come back swapped.
	relisted := []Listed{{UID: 1, Fingerprint: "T"}, {UID: 2, Fingerprint: "T"}, {UID: 3, Fingerprint: "U"}}
	digests := map[uint32]string{1: dg("b"), 2: dg("a")}
	rch, _ := Rematch(m, Markers{UIDValidity: uv2}, relisted, digests, uidlOf(uv2))
	for _, e := range rch.Put[:2] {
		if e.UIDL == m.Entries[0].UIDL || e.UIDL == m.Entries[1].UIDL {
			t.Errorf("a twin without a stored digest got the old UIDL %s", e.UIDL)
		}
	}
	if _, ok := AddDigests(m, uv2, map[uint32]string{1: dg("a")}); ok {
		t.Error("digests of another UIDVALIDITY stored")
	}
	ch, ok := AddDigests(m, uv, map[uint32]string{1: dg("a"), 2: dg("b"), 3: dg("u")})
	if !ok || len(ch.Put) != 2 {
		t.Fatalf("AddDigests = %+v, %v (the unshared fingerprint needs no digest)", ch.Put, ok)
	}
	m = Apply(m, 3, ch)
	if got := DigestsMissing(m); len(got) != 0 {
		t.Fatalf("DigestsMissing after = %v", got)
	}
	rch, st := Rematch(m, Markers{UIDValidity: uv2}, relisted, digests, uidlOf(uv2))
	if st != (RematchStats{Matched: 3}) {
		t.Errorf("stats = %+v", st)
	}
	if rch.Put[0].UIDL != m.Entries[1].UIDL || rch.Put[1].UIDL != m.Entries[0].UIDL {
		t.Errorf("twins after the change: %+v", rch.Put)
	}
}

// TestApplyMerges: Apply of a change that replaces some entries, adds new
// ones and deletes others gives the ascending record, the later of two
// Puts of a UID winning, whatever the order of Put; a record out of order
// (not as the stores keep it) comes out sorted too.
func TestApplyMerges(t *testing.T) {
	m := &Mailbox{Version: 1, Entries: []Entry{{UID: 2, UIDL: "b"}, {UID: 4, UIDL: "d"}, {UID: 6, UIDL: "f"}, {UID: 8, UIDL: "h"}}}
	ch := MailboxChange{Delete: []uint32{6}, Put: []Entry{{UID: 9, UIDL: "i"}, {UID: 4, UIDL: "d1"}, {UID: 1, UIDL: "a"}, {UID: 4, UIDL: "d2"}}}
	got := Apply(m, 2, ch)
	want := []Entry{{UID: 1, UIDL: "a"}, {UID: 2, UIDL: "b"}, {UID: 4, UIDL: "d2"}, {UID: 8, UIDL: "h"}, {UID: 9, UIDL: "i"}}
	if !slices.Equal(got.Entries, want) || got.Version != 2 {
		t.Errorf("Apply = %+v", got)
	}
	if m.Entries[1].UIDL != "d" || len(m.Entries) != 4 {
		t.Errorf("Apply modified its input: %+v", m.Entries)
	}
	unordered := &Mailbox{Entries: []Entry{{UID: 5, UIDL: "e"}, {UID: 3, UIDL: "c"}}}
	if got := Apply(unordered, 1, MailboxChange{Put: []Entry{{UID: 4, UIDL: "d"}}}); !slices.Equal(got.Entries, []Entry{{UID: 3, UIDL: "c"}, {UID: 4, UIDL: "d"}, {UID: 5, UIDL: "e"}}) {
		t.Errorf("Apply of an unordered record = %+v", got.Entries)
	}
	if got := Apply(m, 3, MailboxChange{Reset: true, Put: []Entry{{UID: 7, UIDL: "x"}}}); !slices.Equal(got.Entries, []Entry{{UID: 7, UIDL: "x"}}) {
		t.Errorf("Apply with Reset = %+v", got.Entries)
	}
}
