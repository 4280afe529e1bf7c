package state

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestUIDLFormat(t *testing.T) {
	tests := []struct {
		format   string
		uid, uv  uint32
		want     string
		bad      bool
		wantText string
	}{
		// As Dovecot 2.3's own POP3 prints it with its default format.
		{format: DefaultUIDLFormat, uid: 1, uv: 0x6b076fcb, want: "000000016b076fcb"},
		{format: DefaultUIDLFormat, uid: 0xffffffff, uv: 1, want: "ffffffff00000001"},
		{format: "%u.%v", uid: 42, uv: 7, want: "42.7"},
		{format: "pb-%Xu", uid: 255, uv: 7, want: "pb-ff"},
		{format: "%v", bad: true},        // no %u: messages would share a UIDL
		{format: "%u %v", bad: true},     // space is not allowed in a UIDL
		{format: "%q", bad: true},        // unknown variable
		{format: "%99u", bad: true},      // absurd width
		{format: "%u\x7f", bad: true},    // DEL
		{format: "%u%", bad: true},       // dangling %
		{format: "abc\x01%u", bad: true}, // control character
		{format: "é%u", bad: true},       // 8-bit
		{format: "%010u", uid: 3, uv: 0, want: "0000000003"},
		{format: strings.Repeat("x", 61) + "%u", bad: true}, // could exceed 70 characters
		{format: strings.Repeat("x", 60) + "%Xu", uid: 0xffffffff, want: strings.Repeat("x", 60) + "ffffffff"},
	}
	for _, tc := range tests {
		f, err := NewUIDLFormatter(tc.format)
		if tc.bad {
			if err == nil {
				t.Errorf("format %q: accepted, want an error", tc.format)
			}
			continue
		}
		if err != nil {
			t.Errorf("format %q: %v", tc.format, err)
			continue
		}
		if got := f.Format(tc.uid, tc.uv); got != tc.want {
			t.Errorf("format %q (%d, %d) = %q, want %q", tc.format, tc.uid, tc.uv, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	rec := func(uv, next, n uint32, modseq uint64, entries int) *Mailbox {
		m := &Mailbox{Version: 3, Markers: Markers{UIDValidity: uv, UIDNext: next, NumMessages: n, HighestModSeq: modseq}}
		for i := range entries {
			m.Entries = append(m.Entries, Entry{UID: uint32(i + 1), UIDL: "u" + time.Duration(i).String()})
		}
		return m
	}
	tests := []struct {
		name string
		m    *Mailbox
		now  Markers
		want Plan
	}{
		{"no record", &Mailbox{}, Markers{UIDValidity: 1, UIDNext: 1}, PlanFull},
		{"uidvalidity changed", rec(1, 4, 3, 0, 3), Markers{UIDValidity: 2, UIDNext: 4, NumMessages: 3}, PlanFull},
		{"unchanged", rec(1, 4, 3, 0, 3), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 3}, PlanNone},
		{"unchanged empty", rec(1, 4, 0, 0, 0), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 0}, PlanNone},
		{"new mail", rec(1, 4, 3, 0, 3), Markers{UIDValidity: 1, UIDNext: 5, NumMessages: 4}, PlanIncremental},
		{"expunged", rec(1, 4, 3, 0, 3), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 2}, PlanIncremental},
		{"expunged and appended", rec(1, 4, 3, 0, 3), Markers{UIDValidity: 1, UIDNext: 5, NumMessages: 3}, PlanIncremental},
		{"modseq same", rec(1, 4, 3, 9, 3), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 3, HighestModSeq: 9}, PlanNone},
		{"modseq moved, flags only", rec(1, 4, 3, 9, 3), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 3, HighestModSeq: 12}, PlanNone},
		{"modseq moved, new mail", rec(1, 4, 3, 9, 3), Markers{UIDValidity: 1, UIDNext: 5, NumMessages: 4, HighestModSeq: 12}, PlanIncremental},
		{"record disagrees with count", rec(1, 4, 3, 9, 2), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 3, HighestModSeq: 9}, PlanIncremental},
		{"unknown uidnext", rec(1, 0, 3, 0, 3), Markers{UIDValidity: 1, UIDNext: 4, NumMessages: 3}, PlanIncremental},
	}
	for _, tc := range tests {
		if got := Decide(tc.m, tc.now); got != tc.want {
			t.Errorf("%s: Decide = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func uidlOf(uv uint32) func(uint32) string {
	f, _ := NewUIDLFormatter(DefaultUIDLFormat)
	return func(uid uint32) string { return f.Format(uid, uv) }
}

func TestIncremental(t *testing.T) {
	m := &Mailbox{Version: 1, Markers: Markers{UIDValidity: 5, UIDNext: 4, NumMessages: 3}, Entries: []Entry{
		{UID: 1, UIDL: "a", Size: 10}, {UID: 2, UIDL: "b", Size: 20}, {UID: 3, UIDL: "c", Size: 30},
	}}
	now := Markers{UIDValidity: 5, UIDNext: 7, NumMessages: 4}
	// UID 3 comes back from "UID FETCH 4:*"-style listings only when it is the
	// last one; UIDs 4 and 6 are new, and 2 was expunged.
	listed := []Listed{{UID: 6, Size: 60, Fingerprint: "f6"}, {UID: 4, Size: 40, Fingerprint: "f4"}, {UID: 3, Size: 30}}
	ch := Incremental(m, now, listed, []uint32{1, 3, 4, 6}, nil, uidlOf(5))
	if ch.Reset || ch.Markers != now {
		t.Fatalf("change = %+v", ch)
	}
	if !slices.Equal(ch.Delete, []uint32{2}) {
		t.Errorf("Delete = %v, want [2]", ch.Delete)
	}
	want := []Entry{{UID: 4, UIDL: "0000000400000005", Size: 40, Fingerprint: "f4"}, {UID: 6, UIDL: "0000000600000005", Size: 60, Fingerprint: "f6"}}
	if !slices.Equal(ch.Put, want) {
		t.Errorf("Put = %+v, want %+v", ch.Put, want)
	}
	got := Apply(m, 2, ch)
	var uids []uint32
	for _, e := range got.Entries {
		uids = append(uids, e.UID)
	}
	if !slices.Equal(uids, []uint32{1, 3, 4, 6}) || got.Version != 2 || got.Markers != now {
		t.Errorf("applied record = %+v", got)
	}
	if m.Entries[1].UID != 2 || len(m.Entries) != 3 {
		t.Errorf("Apply modified its input")
	}

	// Without a search, nothing is removed, and a listed UID that has been
	// expunged by the time of the search is not added.
	ch = Incremental(m, now, listed, nil, nil, uidlOf(5))
	if len(ch.Delete) != 0 || len(ch.Put) != 2 {
		t.Errorf("without search: %+v", ch)
	}
	ch = Incremental(m, now, listed, []uint32{1, 2, 3, 4}, nil, uidlOf(5))
	if len(ch.Put) != 1 || ch.Put[0].UID != 4 {
		t.Errorf("with UID 6 gone by the search: %+v", ch.Put)
	}
}

func TestIncrementalNeverReusesUIDL(t *testing.T) {
	// A UIDL format without %v gives UID 2 of a later mailbox generation the
	// same text as an entry that is still in the record.
	f, _ := NewUIDLFormatter("%u")
	format := func(uid uint32) string { return f.Format(uid, 0) }
	m := &Mailbox{Version: 1, Markers: Markers{UIDValidity: 5, UIDNext: 2, NumMessages: 1}, Entries: []Entry{{UID: 1, UIDL: "2"}}}
	ch := Incremental(m, Markers{UIDValidity: 5, UIDNext: 3, NumMessages: 2}, []Listed{{UID: 2}}, nil, nil, format)
	if len(ch.Put) != 1 || ch.Put[0].UIDL != "2-2" {
		t.Errorf("Put = %+v, want UIDL 2-2", ch.Put)
	}
}

func TestRematch(t *testing.T) {
	old := &Mailbox{Version: 4, Markers: Markers{UIDValidity: 100, UIDNext: 6, NumMessages: 5}, Entries: []Entry{
		{UID: 1, UIDL: "old1", Size: 11, Fingerprint: "A"},
		{UID: 2, UIDL: "old2", Size: 12, Fingerprint: "dup"},
		{UID: 3, UIDL: "old3", Size: 13, Fingerprint: "dup"},
		{UID: 4, UIDL: "old4", Size: 14, Fingerprint: "gone"},
		{UID: 5, UIDL: "0000000100000200", Size: 15, Fingerprint: "C"},
	}}
	now := Markers{UIDValidity: 0x200, UIDNext: 7, NumMessages: 6}
	listed := []Listed{
		{UID: 5, Size: 99, Fingerprint: "new"}, // gets format(5, 0x200)
		{UID: 1, Size: 11, Fingerprint: "A"},
		{UID: 2, Size: 12, Fingerprint: "dup"},
		{UID: 3, Size: 12, Fingerprint: "dup"},
		{UID: 4, Size: 77, Fingerprint: "C2"}, // new
	}
	listed = append(listed, Listed{UID: 6, Size: 15, Fingerprint: "C"})
	ch, st := Rematch(old, now, listed, nil, uidlOf(0x200))
	if !ch.Reset {
		t.Fatal("Rematch must reset the record")
	}
	want := []Entry{
		{UID: 1, UIDL: "old1", Size: 11, Fingerprint: "A"},
		// Twins without digests cannot be told apart: new UIDLs
		// (state/twins_test.go has the cases with digests).
		{UID: 2, UIDL: "0000000200000200", Size: 12, Fingerprint: "dup"},
		{UID: 3, UIDL: "0000000300000200", Size: 12, Fingerprint: "dup"},
		{UID: 4, UIDL: "0000000400000200", Size: 77, Fingerprint: "C2"},
		{UID: 5, UIDL: "0000000500000200", Size: 99, Fingerprint: "new"},
		{UID: 6, UIDL: "0000000100000200", Size: 15, Fingerprint: "C"},
	}
	if !slices.Equal(ch.Put, want) {
		t.Errorf("Put =\n%+v\nwant\n%+v", ch.Put, want)
	}
	if st != (RematchStats{Matched: 2, New: 4, Ambiguous: 2, Gone: 3}) {
		t.Errorf("stats = %+v", st)
	}

	// A collision between a new message's UIDL and an old one.
	f, _ := NewUIDLFormatter("%u")
	ch, _ = Rematch(&Mailbox{Version: 1, Entries: []Entry{{UID: 1, UIDL: "1", Fingerprint: "x"}}}, now,
		[]Listed{{UID: 1, Fingerprint: "y"}}, nil, func(u uint32) string { return f.Format(u, 0) })
	if ch.Put[0].UIDL == "1" {
		t.Errorf("UIDL 1 was reused for another message")
	}
}

func TestFingerprint(t *testing.T) {
	d := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	a := Fingerprint("", "<a@example.com>", d, 100)
	if a != Fingerprint("", "<a@example.com>", d.In(time.FixedZone("x", 3600)), 100) {
		t.Error("fingerprint depends on the time zone")
	}
	for _, other := range []string{
		Fingerprint("", "<b@example.com>", d, 100),
		Fingerprint("", "<a@example.com>", d.Add(time.Second), 100),
		Fingerprint("", "<a@example.com>", d, 101),
	} {
		if other == a {
			t.Error("different messages share a fingerprint")
		}
	}
	if Fingerprint("M123", "<a@example.com>", d, 100) != "id:M123" {
		t.Error("the server's stable id must win")
	}
}
