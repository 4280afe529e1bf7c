package state

import (
	"crypto/sha256"
	"slices"
	"strings"
	"testing"
)

// TestRematchTwinsWithoutDigests: twins stored without content digests and
// listed again in swapped order cannot be told apart: neither may inherit a
// stored UIDL.
func TestRematchTwinsWithoutDigests(t *testing.T) {
	old := &Mailbox{Version: 2, Markers: Markers{UIDValidity: 1}, Entries: []Entry{
		{UID: 1, UIDL: "twinA", Size: 50, Fingerprint: "tie"},
		{UID: 2, UIDL: "twinB", Size: 50, Fingerprint: "tie"},
	}}
	listed := []Listed{{UID: 1, Size: 50, Fingerprint: "tie"}, {UID: 2, Size: 50, Fingerprint: "tie"}}
	ch, _ := Rematch(old, Markers{UIDValidity: 2}, listed, nil, uidlOf(2))
	for _, e := range ch.Put {
		if e.UIDL == "twinA" || e.UIDL == "twinB" {
			t.Errorf("UID %d inherited UIDL %s from an ambiguous twin", e.UID, e.UIDL)
		}
	}
}

// dg is a short stand-in for a content digest in the tables.
func dg(s string) string { return "s:" + s }

// TestRematchTwins: where fingerprints tie, a UIDL goes over only to the
// message whose digest matches exactly one stored entry and no other listed
// message; every other tied message gets a new UIDL.
func TestRematchTwins(t *testing.T) {
	const uv = 0x300
	tests := []struct {
		name    string
		stored  []Entry
		listed  []Listed
		digests map[uint32]string
		want    map[uint32]string // listed UID -> the UIDL it must get; "" = a new one
		stats   RematchStats
	}{
		{
			name:    "twins swapped, told apart by digest",
			stored:  []Entry{{UID: 1, UIDL: "A", Size: 50, Fingerprint: "F", Digest: dg("a")}, {UID: 2, UIDL: "B", Size: 50, Fingerprint: "F", Digest: dg("b")}},
			listed:  []Listed{{UID: 1, Size: 50, Fingerprint: "F"}, {UID: 2, Size: 50, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("b"), 2: dg("a")},
			want:    map[uint32]string{1: "B", 2: "A"},
			stats:   RematchStats{Matched: 2},
		},
		{
			name:    "twins in the same order",
			stored:  []Entry{{UID: 7, UIDL: "A", Fingerprint: "F", Digest: dg("a")}, {UID: 9, UIDL: "B", Fingerprint: "F", Digest: dg("b")}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("a"), 2: dg("b")},
			want:    map[uint32]string{1: "A", 2: "B"},
			stats:   RematchStats{Matched: 2},
		},
		{
			name:    "one digest could not be taken",
			stored:  []Entry{{UID: 1, UIDL: "A", Fingerprint: "F", Digest: dg("a")}, {UID: 2, UIDL: "B", Fingerprint: "F", Digest: dg("b")}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}},
			digests: map[uint32]string{2: dg("a")},
			want:    map[uint32]string{1: "", 2: "A"},
			stats:   RematchStats{Matched: 1, New: 1, Ambiguous: 1, Gone: 1},
		},
		{
			name:   "no digests at all",
			stored: []Entry{{UID: 1, UIDL: "A", Fingerprint: "F", Digest: dg("a")}, {UID: 2, UIDL: "B", Fingerprint: "F", Digest: dg("b")}},
			listed: []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}},
			want:   map[uint32]string{1: "", 2: ""},
			stats:  RematchStats{New: 2, Ambiguous: 2, Gone: 2},
		},
		{
			name:    "identical copies: the digests tie too",
			stored:  []Entry{{UID: 1, UIDL: "A", Fingerprint: "F", Digest: dg("x")}, {UID: 2, UIDL: "B", Fingerprint: "F", Digest: dg("x")}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("x"), 2: dg("x")},
			want:    map[uint32]string{1: "", 2: ""},
			stats:   RematchStats{New: 2, Ambiguous: 2, Gone: 2},
		},
		{
			name:    "one twin left, the other deleted",
			stored:  []Entry{{UID: 1, UIDL: "A", Fingerprint: "F", Digest: dg("a")}, {UID: 2, UIDL: "B", Fingerprint: "F", Digest: dg("b")}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("b")},
			want:    map[uint32]string{1: "B"},
			stats:   RematchStats{Matched: 1, Gone: 1},
		},
		{
			name:    "a twin came with the change, the old one has no digest",
			stored:  []Entry{{UID: 1, UIDL: "A", Fingerprint: "F"}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("a"), 2: dg("c")},
			want:    map[uint32]string{1: "", 2: ""},
			stats:   RematchStats{New: 2, Ambiguous: 2, Gone: 1},
		},
		{
			name:    "the only message of a fingerprint with a digest that differs",
			stored:  []Entry{{UID: 1, UIDL: "A", Fingerprint: "F", Digest: dg("a")}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("c")},
			want:    map[uint32]string{1: ""},
			stats:   RematchStats{New: 1, Ambiguous: 1, Gone: 1},
		},
		{
			name:    "the only message of a fingerprint with the same digest",
			stored:  []Entry{{UID: 1, UIDL: "A", Size: 70, Fingerprint: "F", Digest: dg("a")}},
			listed:  []Listed{{UID: 3, Size: 69, Fingerprint: "F"}},
			digests: map[uint32]string{3: dg("a")},
			want:    map[uint32]string{3: "A"},
			stats:   RematchStats{Matched: 1},
		},
		{
			name:    "a copy of one twin joins: that twin is ambiguous, the other is not",
			stored:  []Entry{{UID: 1, UIDL: "A", Fingerprint: "F", Digest: dg("a")}, {UID: 2, UIDL: "B", Fingerprint: "F", Digest: dg("b")}},
			listed:  []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}, {UID: 3, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("a"), 2: dg("b"), 3: dg("a")},
			want:    map[uint32]string{1: "", 2: "B", 3: ""},
			stats:   RematchStats{Matched: 1, New: 2, Ambiguous: 2, Gone: 1},
		},
		{
			name:   "unique fingerprints need no digest",
			stored: []Entry{{UID: 1, UIDL: "A", Size: 5, Fingerprint: "F"}, {UID: 2, UIDL: "B", Size: 6, Fingerprint: "G"}},
			listed: []Listed{{UID: 1, Size: 6, Fingerprint: "G"}, {UID: 2, Size: 5, Fingerprint: "F"}},
			want:   map[uint32]string{1: "B", 2: "A"},
			stats:  RematchStats{Matched: 2},
		},
		{
			name:    "first sight of twins: new UIDLs, digests kept",
			listed:  []Listed{{UID: 1, Fingerprint: "F"}, {UID: 2, Fingerprint: "F"}},
			digests: map[uint32]string{1: dg("a"), 2: dg("b")},
			want:    map[uint32]string{1: "", 2: ""},
			stats:   RematchStats{New: 2},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &Mailbox{Version: 1, Markers: Markers{UIDValidity: 1}, Entries: tc.stored}
			// The caller fetches digests for exactly the UIDs RematchTies
			// names; the table must agree with it.
			for uid := range tc.digests {
				if !slices.Contains(RematchTies(m, tc.listed), uid) {
					t.Fatalf("the table has a digest for UID %d, which RematchTies does not ask for", uid)
				}
			}
			ch, st := Rematch(m, Markers{UIDValidity: uv}, tc.listed, tc.digests, uidlOf(uv))
			if st != tc.stats {
				t.Errorf("stats = %+v, want %+v", st, tc.stats)
			}
			old := map[string]bool{}
			for _, e := range tc.stored {
				old[e.UIDL] = true
			}
			if len(ch.Put) != len(tc.listed) {
				t.Fatalf("Put has %d entries for %d listed", len(ch.Put), len(tc.listed))
			}
			used := map[string]bool{}
			for _, e := range ch.Put {
				if used[e.UIDL] {
					t.Errorf("UIDL %s given twice", e.UIDL)
				}
				used[e.UIDL] = true
				want, ok := tc.want[e.UID]
				switch {
				case !ok:
					t.Errorf("unexpected UID %d", e.UID)
				case want == "" && old[e.UIDL]:
					t.Errorf("UID %d got the old UIDL %s; want a new one", e.UID, e.UIDL)
				case want != "" && e.UIDL != want:
					t.Errorf("UID %d got UIDL %s, want %s", e.UID, e.UIDL, want)
				}
				if e.Digest != tc.digests[e.UID] {
					t.Errorf("UID %d stored digest %q, want %q", e.UID, e.Digest, tc.digests[e.UID])
				}
			}
		})
	}
}

func TestRematchTies(t *testing.T) {
	m := &Mailbox{Entries: []Entry{
		{UID: 1, Fingerprint: "twice"}, {UID: 2, Fingerprint: "twice"},
		{UID: 3, Fingerprint: "digest", Digest: dg("d")},
		{UID: 4, Fingerprint: "once"},
	}}
	listed := []Listed{
		{UID: 10, Fingerprint: "twice"},
		{UID: 11, Fingerprint: "digest"},
		{UID: 12, Fingerprint: "once"},
		{UID: 13, Fingerprint: "new-pair"}, {UID: 14, Fingerprint: "new-pair"},
		{UID: 15, Fingerprint: "new-single"},
		{UID: 16, Fingerprint: ""}, {UID: 17, Fingerprint: ""},
	}
	if got, want := RematchTies(m, listed), []uint32{10, 11, 13, 14}; !slices.Equal(got, want) {
		t.Errorf("RematchTies = %v, want %v", got, want)
	}
	if got := RematchTies(&Mailbox{}, []Listed{{UID: 1, Fingerprint: "x"}, {UID: 2, Fingerprint: "y"}}); len(got) != 0 {
		t.Errorf("RematchTies without ties = %v", got)
	}
}

// TestIncrementalTwins: the first time a fingerprint is shared, both the
// new message and the stored one get a digest.
func TestIncrementalTwins(t *testing.T) {
	m := &Mailbox{Version: 1, Markers: Markers{UIDValidity: 5, UIDNext: 4, NumMessages: 3}, Entries: []Entry{
		{UID: 1, UIDL: "a", Fingerprint: "F"},
		{UID: 2, UIDL: "b", Fingerprint: "G", Digest: dg("g")},
		{UID: 3, UIDL: "c", Fingerprint: "H"},
	}}
	listed := []Listed{
		{UID: 3, Fingerprint: "H"},                             // known: "UID FETCH 4:*" returns the last one
		{UID: 4, Fingerprint: "F"},                             // a twin of UID 1
		{UID: 5, Fingerprint: "G"},                             // a twin of UID 2, which has its digest
		{UID: 6, Fingerprint: "N"}, {UID: 7, Fingerprint: "N"}, // new twins
		{UID: 8, Fingerprint: "U"}, // unique
	}
	ties := IncrementalTies(m, listed)
	if want := []uint32{1, 4, 5, 6, 7}; !slices.Equal(ties, want) {
		t.Fatalf("IncrementalTies = %v, want %v", ties, want)
	}
	digests := map[uint32]string{1: dg("1"), 4: dg("4"), 5: dg("5"), 6: dg("6"), 7: dg("7")}
	now := Markers{UIDValidity: 5, UIDNext: 9, NumMessages: 8}
	ch := Incremental(m, now, listed, nil, digests, uidlOf(5))
	got := Apply(m, 2, ch)
	want := map[uint32]string{1: dg("1"), 2: dg("g"), 3: "", 4: dg("4"), 5: dg("5"), 6: dg("6"), 7: dg("7"), 8: ""}
	if len(got.Entries) != len(want) {
		t.Fatalf("record after the change: %+v", got.Entries)
	}
	for _, e := range got.Entries {
		if e.Digest != want[e.UID] {
			t.Errorf("UID %d digest %q, want %q", e.UID, e.Digest, want[e.UID])
		}
	}
	if got.Entries[0].UIDL != "a" {
		t.Errorf("adding the digest changed UID 1's UIDL to %s", got.Entries[0].UIDL)
	}
	if len(IncrementalTies(m, []Listed{{UID: 9, Fingerprint: "U"}})) != 0 {
		t.Error("a unique new message needs no digest")
	}
}

func TestReplayTargets(t *testing.T) {
	rec := &Mailbox{Markers: Markers{UIDValidity: 2}, Entries: []Entry{
		{UID: 1, UIDL: "twinB", Fingerprint: "F", Digest: dg("b")},
		{UID: 2, UIDL: "twinA", Fingerprint: "F", Digest: dg("a")},
		{UID: 3, UIDL: "solo", Fingerprint: "S"},
		{UID: 4, UIDL: "copy1", Fingerprint: "C", Digest: dg("c")},
		{UID: 5, UIDL: "copy2", Fingerprint: "C", Digest: dg("c")},
		{UID: 6, UIDL: "nodigest1", Fingerprint: "N"},
		{UID: 7, UIDL: "nodigest2", Fingerprint: "N"},
	}}
	tests := []struct {
		name    string
		p       Pending
		uids    []uint32
		skipped []string
		gone    int
	}{
		{
			name: "same UIDVALIDITY: the UID must still be the recorded one",
			p:    Pending{UIDValidity: 2, UIDs: []uint32{2, 9, 3}, UIDLs: []string{"twinA", "solo", "vanished"}},
			uids: []uint32{2}, skipped: []string{"solo"}, gone: 1,
		},
		{
			name: "a twin whose digest matches",
			p:    Pending{UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"twinA"}, Fingerprints: []string{"F"}, Digests: []string{dg("a")}},
			uids: []uint32{2},
		},
		{
			name:    "a twin whose digest differs (the UIDL went to the other twin)",
			p:       Pending{UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"twinB"}, Fingerprints: []string{"F"}, Digests: []string{dg("a")}},
			skipped: []string{"twinB"},
		},
		{
			name:    "a twin without a recorded digest",
			p:       Pending{UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"twinA"}, Fingerprints: []string{"F"}, Digests: []string{""}},
			skipped: []string{"twinA"},
		},
		{
			name:    "identical copies",
			p:       Pending{UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"copy1"}, Fingerprints: []string{"C"}, Digests: []string{dg("c")}},
			skipped: []string{"copy1"},
		},
		{
			name:    "tied fingerprints without digests in the record",
			p:       Pending{UIDValidity: 1, UIDs: []uint32{1}, UIDLs: []string{"nodigest1"}, Fingerprints: []string{"N"}, Digests: []string{dg("n")}},
			skipped: []string{"nodigest1"},
		},
		{
			name: "a unique fingerprint",
			p:    Pending{UIDValidity: 1, UIDs: []uint32{8}, UIDLs: []string{"solo"}, Fingerprints: []string{"S"}, Digests: []string{""}},
			uids: []uint32{3},
		},
		{
			name:    "the fingerprint differs",
			p:       Pending{UIDValidity: 1, UIDs: []uint32{8}, UIDLs: []string{"solo"}, Fingerprints: []string{"X"}, Digests: []string{""}},
			skipped: []string{"solo"},
		},
		{
			name:    "stored before identities: only unique fingerprints",
			p:       Pending{UIDValidity: 1, UIDs: []uint32{1, 2, 3}, UIDLs: []string{"twinA", "solo", "gone"}},
			uids:    []uint32{3},
			skipped: []string{"twinA"},
			gone:    1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := ReplayTargets(rec, &tc.p)
			if !slices.Equal(plan.UIDs, tc.uids) || !slices.Equal(plan.Skipped, tc.skipped) || plan.Gone != tc.gone {
				t.Errorf("plan = %+v, want UIDs %v, skipped %v, gone %d", plan, tc.uids, tc.skipped, tc.gone)
			}
			for i, uid := range plan.UIDs {
				for _, e := range rec.Entries {
					if e.UID == uid && e.UIDL != plan.UIDLs[i] {
						t.Errorf("UIDLs[%d] = %s, but UID %d is %s", i, plan.UIDLs[i], uid, e.UIDL)
					}
				}
			}
		})
	}
}

func TestFormatDigest(t *testing.T) {
	a := FormatDigest(sha256.Sum256([]byte("twin A")))
	b := FormatDigest(sha256.Sum256([]byte("twin B")))
	if a == b || !strings.HasPrefix(a, "s:") || len(a) != 45 {
		t.Errorf("FormatDigest: %q and %q", a, b)
	}
	if a != FormatDigest(sha256.Sum256([]byte("twin A"))) {
		t.Error("FormatDigest is not stable")
	}
}
