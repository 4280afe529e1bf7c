package state

import (
	"encoding/base64"
	"slices"
)

// Telling twins apart.
//
// A Fingerprint (Message-ID, INTERNALDATE, size) is what carries a UIDL
// across a UIDVALIDITY change. Two messages may share one: a message resent
// or filed twice, some mailing lists. Such twins, paired by UID order, swap
// UIDLs when the mailbox comes back in another order, and a deletion meant
// for one then lands on the other. So wherever fingerprints tie, the
// messages also get a content digest (a SHA-256 of the message as the
// upstream sends it, BODY[]), taken only for the tied messages: at first
// sight (the listing or the record already holds the fingerprint), and at a
// re-match for every listed message whose fingerprint is tied. A UIDL is
// carried over to a tied message only when fingerprint and digest match
// exactly one stored entry and exactly one listed message; otherwise the
// message gets a new UIDL (the client downloads it once more, which loses
// nothing). A replay of a pending UPDATE acts only on messages whose
// identity is certain (ReplayTargets).

// FormatDigest is the stored form of a content digest: "s:" and the
// unpadded base64url of the SHA-256 sum.
func FormatDigest(sum [32]byte) string {
	var out [2 + 43]byte
	copy(out[:], "s:")
	base64.RawURLEncoding.Encode(out[2:], sum[:])
	return string(out[:])
}

// fpGroup is what a re-match knows of one fingerprint.
type fpGroup struct {
	stored    int  // entries of the record with it
	listed    int  // messages of the listing with it
	hasDigest bool // some stored entry has a Digest
}

// tied reports whether the group's messages must be told apart by digest.
func (g fpGroup) tied() bool { return g.stored > 1 || g.listed > 1 || g.hasDigest }

// groups counts the stored entries and the listed messages of each
// fingerprint. Empty fingerprints are left out.
func groups(m *Mailbox, listed []Listed) map[string]fpGroup {
	gs := make(map[string]fpGroup, len(listed))
	for _, e := range m.Entries {
		if e.Fingerprint == "" {
			continue
		}
		g := gs[e.Fingerprint]
		g.stored++
		g.hasDigest = g.hasDigest || e.Digest != ""
		gs[e.Fingerprint] = g
	}
	for _, l := range listed {
		if l.Fingerprint == "" {
			continue
		}
		g := gs[l.Fingerprint]
		g.listed++
		gs[l.Fingerprint] = g
	}
	return gs
}

// RematchTies returns, ascending, the UIDs of the listed messages whose
// content digest Rematch needs: those whose fingerprint another listed
// message shares, that two stored entries share, or that a stored entry
// with a Digest has. listed is a complete listing, as for Rematch.
func RematchTies(m *Mailbox, listed []Listed) []uint32 {
	listed = ascending(listed)
	gs := groups(m, listed)
	var uids []uint32
	for _, l := range listed {
		if l.Fingerprint != "" && gs[l.Fingerprint].tied() {
			uids = append(uids, l.UID)
		}
	}
	return uids
}

// IncrementalTies returns, ascending, the UIDs whose content digest
// Incremental needs: the new messages of listed (UIDs the record does not
// hold) whose fingerprint a stored entry or another new message shares, and
// the stored entries without a Digest that share a fingerprint with such a
// new message. Their UIDs are valid: the UIDVALIDITY is the record's.
func IncrementalTies(m *Mailbox, listed []Listed) []uint32 {
	if len(listed) == 0 {
		return nil
	}
	// The entries are in ascending UID order: a search per listed message
	// spares a map of the whole record on every login with new mail.
	known := func(uid uint32) bool {
		_, found := slices.BinarySearchFunc(m.Entries, uid, func(e Entry, u uint32) int { return cmpUID(e.UID, u) })
		return found
	}
	newFP := make(map[string]int)
	seen := make(map[uint32]bool)
	var news []Listed
	for _, l := range listed {
		if seen[l.UID] || known(l.UID) {
			continue
		}
		seen[l.UID] = true
		news = append(news, l)
		if l.Fingerprint != "" {
			newFP[l.Fingerprint]++
		}
	}
	if len(newFP) == 0 {
		return nil
	}
	storedFP := make(map[string]int)
	for _, e := range m.Entries {
		if _, ok := newFP[e.Fingerprint]; ok {
			storedFP[e.Fingerprint]++
		}
	}
	var uids []uint32
	for _, l := range news {
		if l.Fingerprint != "" && newFP[l.Fingerprint]+storedFP[l.Fingerprint] > 1 {
			uids = append(uids, l.UID)
		}
	}
	for _, e := range m.Entries {
		if e.Digest == "" && storedFP[e.Fingerprint] > 0 {
			uids = append(uids, e.UID)
		}
	}
	slices.Sort(uids)
	return slices.Compact(uids)
}

// ReplayPlan is what a replay of a pending UPDATE may act on.
type ReplayPlan struct {
	UIDs    []uint32 // ascending: the messages to act on, in the record's UIDVALIDITY
	UIDLs   []string // UIDLs[i] is the UIDL of UIDs[i]
	Skipped []string // UIDLs of the UPDATE whose message is not certainly the one DELE'd
	Gone    int      // UIDLs of the UPDATE no longer in the record
}

// ReplayTargets decides which messages of rec a replay of p acts on. In the
// UIDVALIDITY p was made in, a UIDL must still name the UID p recorded.
// After a UIDVALIDITY change, the entry holding the UIDL must have the
// fingerprint p recorded for it and, when another entry of rec shares that
// fingerprint, the digest p recorded, which no other entry of rec may
// share. A Pending stored without fingerprints is acted on only for entries
// whose fingerprint no other entry shares. Every other UIDL is skipped: a
// replay never touches a message whose identity is ambiguous.
func ReplayTargets(rec *Mailbox, p *Pending) ReplayPlan {
	var plan ReplayPlan
	at := make(map[string]int, len(p.UIDLs))
	for i, u := range p.UIDLs {
		at[u] = i
	}
	sameUV := rec.UIDValidity == p.UIDValidity
	var gs map[string]fpGroup
	var byDigest map[[2]string]int
	if !sameUV {
		gs = groups(rec, nil)
		byDigest = make(map[[2]string]int)
		for _, e := range rec.Entries {
			if e.Digest != "" {
				byDigest[[2]string{e.Fingerprint, e.Digest}]++
			}
		}
	}
	found := 0
	for _, e := range rec.Entries {
		i, ok := at[e.UIDL]
		if !ok {
			continue
		}
		found++
		if certain(e, p, i, sameUV, gs, byDigest) {
			plan.UIDs = append(plan.UIDs, e.UID)
			plan.UIDLs = append(plan.UIDLs, e.UIDL)
		} else {
			plan.Skipped = append(plan.Skipped, e.UIDL)
		}
	}
	plan.Gone = len(at) - found
	return plan
}

// certain reports whether entry e is the message p recorded as UIDLs[i].
func certain(e Entry, p *Pending, i int, sameUV bool, gs map[string]fpGroup, byDigest map[[2]string]int) bool {
	if sameUV {
		return i < len(p.UIDs) && p.UIDs[i] == e.UID
	}
	if e.Fingerprint == "" {
		return false
	}
	shared := gs[e.Fingerprint].stored > 1
	if len(p.Fingerprints) != len(p.UIDLs) {
		// Stored before identities were recorded.
		return !shared
	}
	if p.Fingerprints[i] != e.Fingerprint {
		return false
	}
	var d string
	if i < len(p.Digests) {
		d = p.Digests[i]
	}
	if d != "" && e.Digest != "" && d != e.Digest {
		return false
	}
	if !shared {
		return true
	}
	return d != "" && e.Digest == d && byDigest[[2]string{e.Fingerprint, d}] == 1
}

// ascending returns l in ascending UID order without repeated UIDs, sorting
// a copy only when it is not so already.
func ascending(l []Listed) []Listed {
	if strictlyAscending(l) {
		return l
	}
	sorted := slices.Clone(l)
	slices.SortFunc(sorted, func(a, b Listed) int { return cmpUID(a.UID, b.UID) })
	return slices.CompactFunc(sorted, func(a, b Listed) bool { return a.UID == b.UID })
}
