package state

import "slices"

// Completing a record listed the cheap way.
//
// The first listing of a large mailbox takes only what the upstream lists
// cheapest (UID and RFC822.SIZE): every message gets its UIDL (from
// UIDVALIDITY and UID, as always) and no Fingerprint. The fingerprints,
// and then the digests of the messages whose fingerprints tie, are
// completed afterwards, in bounded batches, by the functions below. Until
// a message has its fingerprint, a UIDVALIDITY change cannot carry its
// UIDL over: Rematch gives it a new UIDL (the client downloads it once
// more), never another message's.

// Unfingerprinted returns, ascending, the UIDs of the entries of m that
// have no Fingerprint yet.
func Unfingerprinted(m *Mailbox) []uint32 {
	var uids []uint32
	for _, e := range m.Entries {
		if e.Fingerprint == "" {
			uids = append(uids, e.UID)
		}
	}
	return uids
}

// AddFingerprints returns the change that gives each entry of cur without
// a Fingerprint the one fps holds for its UID. fps were taken in
// UIDVALIDITY uv: when cur's is another, a UID names another message, and
// ok is false (nothing to store). ok is false too when no entry changes.
// The markers stay cur's.
func AddFingerprints(cur *Mailbox, uv uint32, fps map[uint32]string) (ch MailboxChange, ok bool) {
	ch = MailboxChange{Markers: cur.Markers}
	if cur.UIDValidity != uv || cur.Version == 0 {
		return ch, false
	}
	for _, e := range cur.Entries {
		if fp := fps[e.UID]; fp != "" && e.Fingerprint == "" {
			e.Fingerprint = fp
			ch.Put = append(ch.Put, e)
		}
	}
	return ch, len(ch.Put) > 0
}

// sharedFingerprints returns the fingerprints that more than one entry of
// m holds.
func sharedFingerprints(m *Mailbox) map[string]bool {
	count := make(map[string]int, len(m.Entries))
	shared := map[string]bool{}
	for _, e := range m.Entries {
		if e.Fingerprint == "" {
			continue
		}
		if count[e.Fingerprint]++; count[e.Fingerprint] > 1 {
			shared[e.Fingerprint] = true
		}
	}
	return shared
}

// DigestsMissing returns, ascending, the UIDs of the entries of m whose
// Fingerprint another entry shares and that have no Digest: the twins a
// completed record must be able to tell apart (see Rematch).
func DigestsMissing(m *Mailbox) []uint32 {
	shared := sharedFingerprints(m)
	var uids []uint32
	for _, e := range m.Entries {
		if e.Digest == "" && shared[e.Fingerprint] {
			uids = append(uids, e.UID)
		}
	}
	slices.Sort(uids)
	return uids
}

// AddDigests returns the change that gives each entry of cur without a
// Digest, whose Fingerprint another entry shares, the digest digests holds
// for its UID. As in AddFingerprints, they were taken in UIDVALIDITY uv,
// and ok is false when there is nothing to store.
func AddDigests(cur *Mailbox, uv uint32, digests map[uint32]string) (ch MailboxChange, ok bool) {
	ch = MailboxChange{Markers: cur.Markers}
	if cur.UIDValidity != uv || cur.Version == 0 {
		return ch, false
	}
	shared := sharedFingerprints(cur)
	for _, e := range cur.Entries {
		if d := digests[e.UID]; d != "" && e.Digest == "" && shared[e.Fingerprint] {
			e.Digest = d
			ch.Put = append(ch.Put, e)
		}
	}
	return ch, len(ch.Put) > 0
}
