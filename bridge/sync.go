package bridge

import (
	"context"
	"fmt"
	"io"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// sync brings the mailbox record of mbox up to date with the selected
// mailbox, asking the upstream as little as it can (see "Sync at login" in
// docs/architecture.md), and returns the record. With measure, the size
// of each message new to the record is measured (measureSizes) instead of
// taken from RFC822.SIZE. Many messages to list (cheapFull,
// cheapIncremental) are listed with UID and RFC822.SIZE only: their
// fingerprints are left to the completion (complete.go), which the caller
// starts with records.complete.
func (r *records) sync(ctx context.Context, conn *upstream.Conn, mbox string, st upstream.Status, log *zap.Logger, measure bool) (*state.Mailbox, error) {
	now := state.Markers{UIDValidity: st.UIDValidity, UIDNext: st.UIDNext, NumMessages: st.NumMessages, HighestModSeq: st.HighestModSeq}
	uidl := func(uid uint32) string { return r.uidl.Format(uid, st.UIDValidity) }
	var (
		plan   state.Plan
		before *state.Mailbox
		ch     state.MailboxChange
		stats  state.RematchStats
		sizes  = map[uint32]int64{} // measured, kept across conflict retries
	)
	rec, err := r.update(ctx, mbox, func(m *state.Mailbox) (c state.MailboxChange, err error) {
		plan, before, stats = state.Decide(m, now), m, state.RematchStats{}
		switch plan {
		case state.PlanNone:
			if m.Markers == now {
				return c, errUnchanged
			}
			c = state.MailboxChange{Markers: now} // only HIGHESTMODSEQ moved (flags)
		case state.PlanIncremental:
			c, err = r.syncIncremental(ctx, conn, m, now, uidl)
		case state.PlanFull:
			c, stats, err = r.syncFull(ctx, conn, m, now, uidl)
		}
		if err == nil && measure {
			err = measureSizes(ctx, conn, m, c.Put, sizes)
		}
		ch = c
		return c, err
	})
	if err != nil {
		return nil, err
	}
	if plan == state.PlanFull && before.Version != 0 && before.UIDValidity != now.UIDValidity {
		// Once per change: a session that lost the race to store it saw
		// the new record and chose another plan.
		r.m.uidvalidityChanged(stats)
		log.Warn("upstream UIDVALIDITY changed; messages re-matched by fingerprint",
			zap.String("mailbox", mbox), zap.Uint32("old_uidvalidity", before.UIDValidity), zap.Uint32("new_uidvalidity", now.UIDValidity),
			zap.Int("matched", stats.Matched), zap.Int("new", stats.New), zap.Int("ambiguous", stats.Ambiguous), zap.Int("gone", stats.Gone))
		if stats.Ambiguous > 0 {
			log.Warn("messages that share a fingerprint could not be told apart after the UIDVALIDITY change; they got new UIDLs (clients download them again)",
				zap.String("mailbox", mbox), zap.Int("messages", stats.Ambiguous))
		}
	}
	log.Debug("mailbox synced", zap.Stringer("plan", plan), zap.Int("added", len(ch.Put)), zap.Int("removed", len(ch.Delete)))
	return rec, nil
}

// listed is msg as the sync uses it. Without details (the cheap listing:
// UID and RFC822.SIZE only) it has no fingerprint; complete.go adds it
// later.
func listed(msg upstream.Msg, details bool) state.Listed {
	if !details {
		return state.Listed{UID: msg.UID, Size: msg.Size}
	}
	return state.Listed{UID: msg.UID, Size: msg.Size, Fingerprint: state.Fingerprint(msg.EmailID, msg.MessageID, msg.InternalDate, msg.Size)}
}

// cheapIncremental reports whether an incremental sync of m lists the new
// messages the cheap way: at least r.coldAt of them are new.
func (r *records) cheapIncremental(m *state.Mailbox, now state.Markers) bool {
	return int(now.NumMessages)-len(m.Entries) >= r.coldAt
}

// cheapFull reports whether a full sync of m lists the mailbox the cheap
// way: it holds at least r.coldAt messages, and no entry of m has a
// fingerprint a listed message could be re-matched with (a record seen for
// the first time, or one whose fingerprints were never completed).
func (r *records) cheapFull(m *state.Mailbox, now state.Markers) bool {
	if int(now.NumMessages) < r.coldAt {
		return false
	}
	for _, e := range m.Entries {
		if e.Fingerprint != "" {
			return false
		}
	}
	return true
}

// syncIncremental fetches only the UIDs from the stored UIDNEXT on, and
// searches for expunged UIDs only when the count says some are gone. Many
// new messages (cheapIncremental) are listed without their fingerprints,
// which complete.go adds in the background.
func (r *records) syncIncremental(ctx context.Context, conn *upstream.Conn, m *state.Mailbox, now state.Markers, uidl func(uint32) string) (state.MailboxChange, error) {
	known := make(map[uint32]bool, len(m.Entries))
	for _, e := range m.Entries {
		known[e.UID] = true
	}
	from := max(m.UIDNext, 1)
	details := !r.cheapIncremental(m, now)
	var news []state.Listed
	err := conn.List(ctx, from, details, func(msg upstream.Msg) error {
		if !known[msg.UID] {
			news = append(news, listed(msg, details))
		}
		return nil
	})
	if err != nil {
		return state.MailboxChange{}, err
	}
	var present []uint32
	if uint32(len(m.Entries)+len(news)) != now.NumMessages {
		present, err = conn.SearchAll(ctx)
		if err != nil {
			return state.MailboxChange{}, err
		}
		seen := make(map[uint32]bool, len(news))
		for _, l := range news {
			seen[l.UID] = true
		}
		var holes []uint32
		for _, u := range present {
			if !known[u] && !seen[u] {
				holes = append(holes, u)
			}
		}
		if len(holes) > 0 {
			err = conn.FetchInfo(ctx, holes, func(msg upstream.Msg) error {
				news = append(news, listed(msg, true))
				return nil
			})
			if err != nil {
				return state.MailboxChange{}, err
			}
		}
	}
	digests, err := r.digests(ctx, conn, state.IncrementalTies(m, news))
	if err != nil {
		return state.MailboxChange{}, err
	}
	return state.Incremental(m, now, news, present, digests, uidl), nil
}

// digests takes the content digests of uids, the messages whose fingerprint
// another message shares, so that they can be told apart (state.Rematch).
// A UID that no longer exists has none.
func (r *records) digests(ctx context.Context, conn *upstream.Conn, uids []uint32) (map[uint32]string, error) {
	if len(uids) == 0 {
		return nil, nil
	}
	sums, err := conn.Digests(ctx, uids)
	if err != nil {
		return nil, fmt.Errorf("digests of %d messages that share a fingerprint: %w", len(uids), err)
	}
	out := make(map[uint32]string, len(sums))
	for uid, sum := range sums {
		out[uid] = state.FormatDigest(sum)
	}
	return out, nil
}

// syncFull lists the whole mailbox and re-matches it against the record.
// A large mailbox with nothing to re-match with (cheapFull) is listed
// without fingerprints: its messages all get new UIDLs anyway, and
// complete.go adds the fingerprints in the background.
func (r *records) syncFull(ctx context.Context, conn *upstream.Conn, m *state.Mailbox, now state.Markers, uidl func(uint32) string) (state.MailboxChange, state.RematchStats, error) {
	all := make([]state.Listed, 0, now.NumMessages)
	details := !r.cheapFull(m, now)
	err := conn.List(ctx, 1, details, func(msg upstream.Msg) error {
		all = append(all, listed(msg, details))
		return nil
	})
	if err != nil {
		return state.MailboxChange{}, state.RematchStats{}, err
	}
	digests, err := r.digests(ctx, conn, state.RematchTies(m, all))
	if err != nil {
		return state.MailboxChange{}, state.RematchStats{}, err
	}
	ch, stats := state.Rematch(m, now, all, digests, uidl)
	return ch, stats, nil
}

// measureSizes sets the Size of each entry of put that is new to the
// record m to the octets RETR sends for it (CRLF line ends, the final CRLF
// included, before dot-stuffing): BODY.PEEK[] streamed through the POP3
// framing into a counter, nothing buffered. An entry m already holds keeps
// its stored size, so every message is measured once. sizes caches what
// was measured (a conflict retry asks again). A message expunged meanwhile
// keeps its RFC822.SIZE: no RETR can fetch it.
func measureSizes(ctx context.Context, conn *upstream.Conn, m *state.Mailbox, put []state.Entry, sizes map[uint32]int64) error {
	stored := make(map[string]int64, len(m.Entries))
	for _, e := range m.Entries {
		stored[e.UIDL] = e.Size
	}
	for i := range put {
		e := &put[i]
		if size, ok := stored[e.UIDL]; ok {
			e.Size = size
			continue
		}
		if size, ok := sizes[e.UID]; ok {
			e.Size = size
			continue
		}
		mw, end := pop3.NewMessageWriter(io.Discard)
		_, err := conn.WriteMessage(ctx, e.UID, mw)
		if upstream.KindOf(err) == upstream.KindGone {
			continue
		}
		if err != nil {
			return fmt.Errorf("measuring the size of UID %d: %w", e.UID, err)
		}
		_ = end()
		sizes[e.UID] = mw.MessageOctets()
		e.Size = sizes[e.UID]
	}
	return nil
}
