package state

import (
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"strconv"
	"time"
)

// Fingerprint identifies a message across UIDVALIDITY changes: the server's
// stable id (RFC 8474 EMAILID, Gmail X-GM-MSGID) where one exists, else a
// hash of Message-ID, INTERNALDATE and RFC822.SIZE.
func Fingerprint(emailID, messageID string, internalDate time.Time, size int64) string {
	if emailID != "" {
		return "id:" + emailID
	}
	var buf [256]byte
	b := append(buf[:0], messageID...)
	b = append(b, 0)
	b = strconv.AppendInt(b, internalDate.Unix(), 10)
	b = append(b, 0)
	b = strconv.AppendInt(b, size, 10)
	sum := sha256.Sum256(b)
	var out [2 + 20]byte
	copy(out[:], "h:")
	base64.RawURLEncoding.Encode(out[2:], sum[:15])
	return string(out[:])
}

// Plan is what a login must ask the upstream to bring a mailbox record up
// to date.
type Plan int

const (
	// PlanNone: nothing changed upstream; no FETCH at all.
	PlanNone Plan = iota
	// PlanIncremental: same UIDVALIDITY; fetch the UIDs from the stored
	// UIDNEXT on, and search for expunged ones when the count disagrees.
	PlanIncremental
	// PlanFull: no record yet or a new UIDVALIDITY; list every message and
	// re-match by fingerprint.
	PlanFull
)

func (p Plan) String() string {
	switch p {
	case PlanNone:
		return "none"
	case PlanIncremental:
		return "incremental"
	case PlanFull:
		return "full"
	}
	return "Plan(" + strconv.Itoa(int(p)) + ")"
}

// Decide chooses the cheapest plan that is still exact, from the stored
// record m and the markers the upstream reports now (the sync at
// login). Nothing changed when UIDVALIDITY is the same, the record holds as
// many messages as the upstream, and either HIGHESTMODSEQ is the same
// (CONDSTORE: any expunge or append raises it) or UIDNEXT and the message
// count are both the same (an append raises UIDNEXT; an expunge alone lowers
// the count).
func Decide(m *Mailbox, now Markers) Plan {
	if m.Version == 0 || m.UIDValidity != now.UIDValidity || now.UIDValidity == 0 {
		return PlanFull
	}
	if uint32(len(m.Entries)) != now.NumMessages {
		return PlanIncremental
	}
	if m.HighestModSeq != 0 && m.HighestModSeq == now.HighestModSeq {
		return PlanNone
	}
	if m.UIDNext != 0 && m.UIDNext == now.UIDNext && m.NumMessages == now.NumMessages {
		return PlanNone
	}
	return PlanIncremental
}

// Listed is one message as the upstream lists it.
type Listed struct {
	UID         uint32
	Size        int64
	Fingerprint string
}

// uidlIssuer gives out UIDLs that are unique within a record.
type uidlIssuer struct {
	format func(uid uint32) string
	used   map[string]bool
}

func newIssuer(entries []Entry, format func(uid uint32) string) *uidlIssuer {
	used := make(map[string]bool, len(entries))
	for _, e := range entries {
		used[e.UIDL] = true
	}
	return &uidlIssuer{format: format, used: used}
}

// issue returns format(uid), with a suffix when that UIDL is taken, so that a
// UIDL is never given to two messages.
func (is *uidlIssuer) issue(uid uint32) string {
	base := is.format(uid)
	u := base
	for n := 2; is.used[u]; n++ {
		u = base + "-" + strconv.Itoa(n)
	}
	is.used[u] = true
	return u
}

// Incremental computes the change for a record whose UIDVALIDITY still holds.
// listed are the messages the upstream listed from the stored UIDNEXT on,
// plus any older UIDs present upstream but missing from the record. present,
// when not nil, is the complete set of UIDs in the mailbox now (UID SEARCH
// ALL): entries not in it are removed. digests are the content digests the
// caller took, by UID, of the UIDs IncrementalTies named: a new message
// stores its digest, and a stored entry without one gains it. uidl formats
// the UIDL of a new UID.
func Incremental(m *Mailbox, now Markers, listed []Listed, present []uint32, digests map[uint32]string, uidl func(uid uint32) string) MailboxChange {
	ch := MailboxChange{Markers: now}
	known := make(map[uint32]bool, len(m.Entries))
	for _, e := range m.Entries {
		known[e.UID] = true
	}
	is := newIssuer(m.Entries, uidl)
	var added map[uint32]bool
	for _, l := range listed {
		if known[l.UID] || added[l.UID] {
			continue
		}
		if added == nil {
			added = make(map[uint32]bool)
		}
		added[l.UID] = true
		ch.Put = append(ch.Put, Entry{UID: l.UID, UIDL: is.issue(l.UID), Size: l.Size, Fingerprint: l.Fingerprint, Digest: digests[l.UID]})
	}
	if len(digests) > 0 {
		for _, e := range m.Entries {
			if d := digests[e.UID]; d != "" && e.Digest == "" {
				e.Digest = d
				ch.Put = append(ch.Put, e)
			}
		}
	}
	if present != nil {
		in := make(map[uint32]bool, len(present))
		for _, u := range present {
			in[u] = true
		}
		for _, e := range m.Entries {
			if !in[e.UID] {
				ch.Delete = append(ch.Delete, e.UID)
			}
		}
		kept := ch.Put[:0]
		for _, e := range ch.Put {
			if in[e.UID] {
				kept = append(kept, e)
			}
		}
		ch.Put = kept
	}
	slices.SortFunc(ch.Put, func(a, b Entry) int { return cmpUID(a.UID, b.UID) })
	return ch
}

// RematchStats counts what a full re-listing found.
type RematchStats struct {
	Matched   int // messages that kept their UIDL
	New       int // messages that got a new UIDL
	Ambiguous int // of New: messages that tied with another and could not be told apart
	Gone      int // entries whose message is no longer upstream
}

// Rematch computes the change that replaces the record with a complete
// listing after a UIDVALIDITY change (or for a record seen for the first
// time). A listed message whose fingerprint matches a stored entry keeps that
// entry's UIDL and size, provided the match is certain: the fingerprint
// belongs to one stored entry and one listed message, neither of which
// needs a digest; or, where fingerprints tie (RematchTies), the content
// digest in digests (by listed UID) matches the Digest of exactly one of
// those stored entries and of no other listed message. Every other message
// gets a new UIDL, distinct from every UIDL of the old record, so that no
// UIDL is ever reused for another message or carried to a message it may
// not belong to. Listed messages keep the digest they were given.
func Rematch(m *Mailbox, now Markers, listed []Listed, digests map[uint32]string, uidl func(uid uint32) string) (MailboxChange, RematchStats) {
	ch := MailboxChange{Markers: now, Reset: true, Put: make([]Entry, 0, len(listed))}
	var st RematchStats
	// The record's entries are in ascending UID order already; so, from
	// the upstream, is a listing.
	sorted := ascending(listed)
	var byFP map[string]Entry // the entry of a fingerprint held by one stored entry
	var gs map[string]fpGroup
	if len(m.Entries) > 0 {
		byFP = make(map[string]Entry, len(m.Entries))
		for _, e := range m.Entries {
			if e.Fingerprint != "" {
				byFP[e.Fingerprint] = e
			}
		}
		gs = groups(m, sorted)
	}
	// Where fingerprints tie: the stored entries and the listed messages
	// of each (fingerprint, digest).
	var storedFD map[[2]string][]Entry
	var listedFD map[[2]string]int
	for _, l := range sorted {
		if g, ok := gs[l.Fingerprint]; ok && g.stored > 0 && g.tied() {
			if listedFD == nil {
				storedFD = make(map[[2]string][]Entry)
				listedFD = make(map[[2]string]int)
			}
			if d := digests[l.UID]; d != "" {
				listedFD[[2]string{l.Fingerprint, d}]++
			}
		}
	}
	if listedFD != nil {
		for _, e := range m.Entries {
			if e.Digest != "" && gs[e.Fingerprint].tied() {
				k := [2]string{e.Fingerprint, e.Digest}
				storedFD[k] = append(storedFD[k], e)
			}
		}
	}
	is := newIssuer(m.Entries, uidl)
	for _, l := range sorted {
		d := digests[l.UID]
		g := gs[l.Fingerprint]
		switch {
		case l.Fingerprint == "" || g.stored == 0:
		case !g.tied():
			e := byFP[l.Fingerprint]
			ch.Put = append(ch.Put, Entry{UID: l.UID, UIDL: e.UIDL, Size: e.Size, Fingerprint: l.Fingerprint, Digest: e.Digest})
			st.Matched++
			continue
		default:
			k := [2]string{l.Fingerprint, d}
			if cands := storedFD[k]; d != "" && len(cands) == 1 && listedFD[k] == 1 {
				e := cands[0]
				ch.Put = append(ch.Put, Entry{UID: l.UID, UIDL: e.UIDL, Size: e.Size, Fingerprint: l.Fingerprint, Digest: d})
				st.Matched++
				continue
			}
			st.Ambiguous++
		}
		ch.Put = append(ch.Put, Entry{UID: l.UID, UIDL: is.issue(l.UID), Size: l.Size, Fingerprint: l.Fingerprint, Digest: d})
		st.New++
	}
	st.Gone = len(m.Entries) - st.Matched
	return ch, st
}

// Apply returns the record m becomes after ch, with the given version. It
// does not modify m. Stores must give the same result (state/storetest
// checks it).
func Apply(m *Mailbox, version uint64, ch MailboxChange) *Mailbox {
	out := &Mailbox{Version: version, Markers: ch.Markers}
	var entries []Entry
	if !ch.Reset {
		entries = m.Entries
		if !ascendingEntries(entries) {
			// Not a record as the stores keep it.
			entries = lastByUID(slices.Clone(entries))
		}
	}
	var del map[uint32]bool
	if len(ch.Delete) > 0 {
		del = make(map[uint32]bool, len(ch.Delete))
		for _, u := range ch.Delete {
			del[u] = true
		}
	}
	// A later Put of the same UID wins; a Put replaces the entry of its
	// UID (Delete is applied before Put).
	put := lastByUID(slices.Clone(ch.Put))
	// Merge the two ascending lists.
	out.Entries = make([]Entry, 0, len(entries)+len(put))
	i, j := 0, 0
	for i < len(entries) || j < len(put) {
		switch {
		case j == len(put) || i < len(entries) && entries[i].UID < put[j].UID:
			if !del[entries[i].UID] {
				out.Entries = append(out.Entries, entries[i])
			}
			i++
		case i == len(entries) || put[j].UID < entries[i].UID:
			out.Entries = append(out.Entries, put[j])
			j++
		default:
			out.Entries = append(out.Entries, put[j])
			i++
			j++
		}
	}
	return out
}

// lastByUID sorts es by UID, stably, and keeps the last entry of each
// UID. It reuses es.
func lastByUID(es []Entry) []Entry {
	slices.SortStableFunc(es, func(a, b Entry) int { return cmpUID(a.UID, b.UID) })
	out := es[:0]
	for i, e := range es {
		if i+1 < len(es) && es[i+1].UID == e.UID {
			continue
		}
		out = append(out, e)
	}
	return out
}

// ascendingEntries reports whether es is in ascending UID order without
// duplicates.
func ascendingEntries(es []Entry) bool {
	for i := 1; i < len(es); i++ {
		if es[i].UID <= es[i-1].UID {
			return false
		}
	}
	return true
}

// strictlyAscending reports whether l is in ascending UID order without
// duplicates.
func strictlyAscending(l []Listed) bool {
	for i := 1; i < len(l); i++ {
		if l[i].UID <= l[i-1].UID {
			return false
		}
	}
	return true
}

func cmpUID(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
