package bridge

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// Importing the UIDLs of an old POP3 server (popbridge import-uidl).
//
// A site that moves its POP3 clients from another POP3 server to popbridge
// over the same mail can keep the UIDLs those clients know, so that they
// download nothing again. ImportUIDLs reads every message of the old
// server (UIDL, LIST, TOP n 0), matches each to a message of the upstream
// mailbox by Message-ID, Date and size, and, where several messages share
// those, by content digest, and stores the old UIDL as that message's UIDL
// in the mailbox record: the record every device of the account shares.
//
// Sizes: the old server's LIST size is compared with the size popbridge
// lists, the octets RETR sends (both count CRLF line ends). A message whose
// size differs is not matched (a server that counted LF line ends, or
// added a header of its own, would mislead a match by header alone).
//
// Digests: where Message-ID, Date and size are shared, the old server's
// copy (TOP n with a line count beyond any message, so that no server
// marks it seen as RETR may) and the upstream's (BODY.PEEK[]) are hashed
// with their line ends made CRLF, and a pair is made only when its digest
// is unique on both sides. Anything else is reported as ambiguous, never
// guessed: those messages keep popbridge's UIDLs (a client downloads them
// once more, which loses nothing).
//
// Served UIDLs: an entry already in the mailbox record got its UIDL at a
// login through popbridge (or at an earlier import), so its UIDL counts as
// served to a client. It is kept unless ImportOptions.Force: a client may
// already have downloaded the message under it, and replacing it makes
// that client download it again, and makes the messages a device hid
// (hide and flag policies) under the old UIDL show again. An entry whose
// UIDL is already the old server's is left alone, so a second run changes
// nothing (idempotent). Nothing is stored when nothing is imported: a
// record the import did not need stays unwritten, and a later run is not
// refused.
//
// Uniqueness: an old UIDL that is not printable ASCII (0x21-0x7E), is
// longer than 70 characters (RFC 1939 §7), or appears twice on the old
// server is not imported. One that has the shape of a UIDL popbridge
// issues (state.UIDLFormatter.MayIssue) is not imported either, so that a
// later message can never get it. An imported UIDL that an unserved entry
// holds moves that entry to a new UIDL of popbridge's; one that a served
// entry holds is a conflict (with Force, that entry gets a new UIDL).
//
// Nothing changes upstream: the upstream is read with BODY.PEEK only, and
// the old server with UIDL, LIST and TOP (no RETR, no DELE).

// OldMessage is one message of the old POP3 server's maildrop.
type OldMessage struct {
	Num    int    // its message number in the old server's session
	UIDL   string // the old server's UIDL
	Size   int64  // the old server's LIST size
	Header []byte // what TOP n 0 returned, dot-stuffing undone
}

// OldServer is what ImportUIDLs reads from the old POP3 server (OldPOP3).
type OldServer interface {
	// Messages lists every message.
	Messages(ctx context.Context) ([]OldMessage, error)
	// Digest returns the SHA-256 of message num with CRLF line ends
	// (contentDigest); ok is false when it cannot be read faithfully.
	Digest(ctx context.Context, num int) (sum [32]byte, ok bool, err error)
}

// ImportOptions modify ImportUIDLs.
type ImportOptions struct {
	Force  bool // replace UIDLs already served to clients
	DryRun bool // compute and report, store nothing
}

// ImportReport is what ImportUIDLs found and did. Every old message is
// counted once in exactly one of Already, Imported, Refused, Conflicts,
// Ambiguous, Unmatched, Invalid.
type ImportReport struct {
	Old      int // messages of the old server
	Upstream int // messages of the upstream mailbox

	Matched     int // old messages paired with one upstream message: Already+Imported+Refused+Conflicts
	Already     int // of Matched: the message has the old UIDL already
	Imported    int // of Matched: the old UIDL is now (with DryRun: would be) the message's
	Overwritten int // of Imported: it replaced a served UIDL (Force)
	Refused     int // of Matched: the message has a served UIDL, kept (no Force)
	Conflicts   int // of Matched: the old UIDL is another message's served UIDL, or one popbridge may issue
	Renamed     int // unserved entries moved to a new UIDL to make room for an imported one

	Ambiguous int // old messages that shared Message-ID, Date and size with others that content did not tell apart
	Unmatched int // old messages without an upstream message of the same Message-ID, Date and size
	Invalid   int // old UIDLs not imported: not printable, over 70 characters, or twice on the old server

	Stored bool // the mailbox record was written

	// Notes has one line per old message that was not imported, and per
	// refused or conflicting one, for the operator.
	Notes []string
}

// importFields are the header fields a match compares.
var importFields = []string{"MESSAGE-ID", "DATE"}

// matchKey is what pairs an old message with an upstream one before
// content is looked at.
type matchKey struct {
	messageID, date string
	size            int64
}

func keyOf(header []byte, size int64) matchKey {
	return matchKey{
		messageID: strings.Join(strings.Fields(upstream.HeaderValue(header, "Message-ID")), ""),
		date:      normalDate(upstream.HeaderValue(header, "Date")),
		size:      size,
	}
}

// ImportUIDLs logs in to the upstream as account with password, reads the
// old server and stores the old UIDLs it can match in the mailbox record
// of account (see the comment at the top of this file).
func (b *Bridge) ImportUIDLs(ctx context.Context, account, password string, old OldServer, opt ImportOptions) (*ImportReport, error) {
	return b.importUIDLs(ctx, account, old, opt, func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error) {
		return b.openUpstream(ctx, account, password)
	})
}

func (b *Bridge) importUIDLs(ctx context.Context, account string, old OldServer, opt ImportOptions, open upstreamOpener) (*ImportReport, error) {
	log := b.log.With(zap.String("account", account), zap.String("op", "import-uidl"))
	olds, err := old.Messages(ctx)
	if err != nil {
		return nil, err
	}
	conn, st, err := open(ctx, account)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	mbox := b.mailboxKey(account)
	if err := b.adoptLegacy(ctx, account, mbox, log); err != nil {
		return nil, err
	}
	im := &importer{
		r: b.records, conn: conn, st: st, old: old, olds: olds, opt: opt,
		headers: map[uint32]matchKey{}, upDigests: map[uint32][32]byte{},
		oldDigests: map[int]*[32]byte{},
	}
	var rep *ImportReport
	_, err = b.records.update(ctx, mbox, func(cur *state.Mailbox) (state.MailboxChange, error) {
		ch, r, err := im.plan(ctx, cur)
		if err != nil {
			return ch, err
		}
		rep = r
		if opt.DryRun || r.Imported == 0 && r.Renamed == 0 {
			return ch, errUnchanged
		}
		return ch, nil
	})
	if err != nil {
		return nil, err
	}
	rep.Stored = !opt.DryRun && (rep.Imported > 0 || rep.Renamed > 0)
	log.Info("UIDLs imported from the old POP3 server",
		zap.Int("old", rep.Old), zap.Int("matched", rep.Matched), zap.Int("imported", rep.Imported),
		zap.Int("already", rep.Already), zap.Int("refused", rep.Refused), zap.Int("conflicts", rep.Conflicts),
		zap.Int("ambiguous", rep.Ambiguous), zap.Int("unmatched", rep.Unmatched), zap.Int("invalid", rep.Invalid),
		zap.Bool("dry_run", opt.DryRun), zap.Bool("stored", rep.Stored))
	return rep, nil
}

// importer holds what one import learned, across the retries of its
// record update.
type importer struct {
	r    *records
	conn *upstream.Conn
	st   upstream.Status
	old  OldServer
	olds []OldMessage
	opt  ImportOptions

	headers    map[uint32]matchKey // by UID, in st.UIDValidity
	upDigests  map[uint32][32]byte
	oldDigests map[int]*[32]byte // nil: unreadable
}

// plan computes the change that brings cur up to date with the upstream
// (as a login's sync would) and gives the matched messages their old UIDLs.
func (im *importer) plan(ctx context.Context, cur *state.Mailbox) (state.MailboxChange, *ImportReport, error) {
	now := state.Markers{UIDValidity: im.st.UIDValidity, UIDNext: im.st.UIDNext, NumMessages: im.st.NumMessages, HighestModSeq: im.st.HighestModSeq}
	uidl := func(uid uint32) string { return im.r.uidl.Format(uid, im.st.UIDValidity) }
	var ch state.MailboxChange
	var err error
	switch state.Decide(cur, now) {
	case state.PlanNone:
		ch = state.MailboxChange{Markers: now}
	case state.PlanIncremental:
		ch, err = im.r.syncIncremental(ctx, im.conn, cur, now, uidl)
	case state.PlanFull:
		ch, _, err = im.r.syncFull(ctx, im.conn, cur, now, uidl)
	}
	if err != nil {
		return ch, nil, err
	}
	next := state.Apply(cur, cur.Version+1, ch)
	served := make(map[string]bool, len(cur.Entries))
	for _, e := range cur.Entries {
		served[e.UIDL] = true
	}
	rep := &ImportReport{Old: len(im.olds), Upstream: len(next.Entries)}
	note := func(m OldMessage, format string, args ...any) {
		rep.Notes = append(rep.Notes, fmt.Sprintf("old message %d (UIDL %q): ", m.Num, m.UIDL)+fmt.Sprintf(format, args...))
	}

	// The upstream side: Message-ID, Date and size of every entry.
	var need []uint32
	for _, e := range next.Entries {
		if _, ok := im.headers[e.UID]; !ok {
			need = append(need, e.UID)
		}
	}
	sizes := make(map[uint32]int64, len(next.Entries))
	for _, e := range next.Entries {
		sizes[e.UID] = e.Size
	}
	if len(need) > 0 {
		err := im.conn.HeaderFields(ctx, need, importFields, func(uid uint32, h []byte) {
			im.headers[uid] = keyOf(h, 0)
		})
		if err != nil {
			return ch, nil, fmt.Errorf("header fields of the upstream messages: %w", err)
		}
	}
	ups := make(map[matchKey][]int) // key → indexes into next.Entries
	for i, e := range next.Entries {
		k, ok := im.headers[e.UID]
		if !ok {
			continue // gone since the listing
		}
		k.size = e.Size
		ups[k] = append(ups[k], i)
	}

	// The old side: valid, unique UIDLs only.
	count := make(map[string]int, len(im.olds))
	for _, m := range im.olds {
		count[m.UIDL]++
	}
	olds := make(map[matchKey][]int) // key → indexes into im.olds
	var keys []matchKey
	for i, m := range im.olds {
		switch {
		case !validUIDL(m.UIDL):
			rep.Invalid++
			note(m, "not a valid UIDL (RFC 1939 §7: 1 to 70 characters 0x21-0x7E)")
			continue
		case count[m.UIDL] > 1:
			rep.Invalid++
			note(m, "the old server gives this UIDL to %d messages", count[m.UIDL])
			continue
		}
		k := keyOf(m.Header, m.Size)
		if olds[k] == nil {
			keys = append(keys, k)
		}
		olds[k] = append(olds[k], i)
	}

	// Pairs: old message index → entry index.
	type pair struct{ old, entry int }
	var pairs []pair
	for _, k := range keys {
		os, es := olds[k], ups[k]
		switch {
		case len(es) == 0:
			rep.Unmatched += len(os)
			for _, i := range os {
				note(im.olds[i], "no upstream message has its Message-ID, Date and size (%d octets)", k.size)
			}
		case len(os) == 1 && len(es) == 1:
			pairs = append(pairs, pair{os[0], es[0]})
		default:
			// Told apart by content, or not at all.
			oldSums := make(map[[32]byte][]int)
			for _, i := range os {
				s, err := im.oldDigest(ctx, im.olds[i].Num)
				if err != nil {
					return ch, nil, err
				}
				if s != nil {
					oldSums[*s] = append(oldSums[*s], i)
				}
			}
			upSums := make(map[[32]byte][]int)
			uids := make([]uint32, 0, len(es))
			for _, j := range es {
				uids = append(uids, next.Entries[j].UID)
			}
			sums, err := im.upDigest(ctx, uids)
			if err != nil {
				return ch, nil, err
			}
			for _, j := range es {
				if s, ok := sums[next.Entries[j].UID]; ok {
					upSums[s] = append(upSums[s], j)
				}
			}
			for _, i := range os {
				s, _ := im.oldDigest(ctx, im.olds[i].Num)
				if s != nil && len(oldSums[*s]) == 1 && len(upSums[*s]) == 1 {
					pairs = append(pairs, pair{i, upSums[*s][0]})
					continue
				}
				rep.Ambiguous++
				note(im.olds[i], "%d old and %d upstream messages share its Message-ID, Date and size, and their content does not tell them apart", len(os), len(es))
			}
		}
	}

	// The UIDLs the record will hold, by entry.
	final := make([]string, len(next.Entries))
	holder := make(map[string]int, len(next.Entries)) // UIDL → entry index
	for i, e := range next.Entries {
		final[i] = e.UIDL
		holder[e.UIDL] = i
	}
	slices.SortFunc(pairs, func(a, b pair) int { return a.entry - b.entry })
	taken := make(map[string]bool) // UIDLs imported in this run
	var renamed []int
	for _, p := range pairs {
		m, e := im.olds[p.old], next.Entries[p.entry]
		rep.Matched++
		switch {
		case final[p.entry] == m.UIDL:
			rep.Already++
			taken[m.UIDL] = true
			continue
		case im.r.uidl.MayIssue(m.UIDL, im.st.UIDValidity):
			rep.Conflicts++
			note(m, "has the shape of a UIDL popbridge gives new messages (uidl.format); not imported")
			continue
		case served[e.UIDL] && !im.opt.Force:
			rep.Refused++
			note(m, "its upstream message (UID %d) has the UIDL %q already, served to clients; kept (-force replaces it)", e.UID, e.UIDL)
			continue
		}
		if h, ok := holder[m.UIDL]; ok && h != p.entry {
			// Another message holds this UIDL now.
			if taken[m.UIDL] || served[m.UIDL] && !im.opt.Force {
				rep.Conflicts++
				note(m, "another upstream message (UID %d) holds this UIDL, served to clients; not imported", next.Entries[h].UID)
				continue
			}
			renamed = append(renamed, h)
			final[h] = "" // given a new UIDL below, unless paired itself
			delete(holder, m.UIDL)
		}
		if served[e.UIDL] {
			rep.Overwritten++
		}
		delete(holder, final[p.entry])
		final[p.entry] = m.UIDL
		holder[m.UIDL] = p.entry
		taken[m.UIDL] = true
		rep.Imported++
	}
	// Entries whose UIDL went to another message get a new one of
	// popbridge's, distinct from every UIDL held or served.
	for _, h := range renamed {
		if final[h] != "" {
			continue // it got an old UIDL of its own
		}
		e := next.Entries[h]
		base := uidl(e.UID)
		u := base
		for n := 2; held(holder, u) || served[u] || taken[u]; n++ {
			u = base + "-" + strconv.Itoa(n)
		}
		final[h] = u
		holder[u] = h
		rep.Renamed++
	}
	for i, e := range next.Entries {
		if final[i] != e.UIDL {
			e.UIDL = final[i]
			ch.Put = append(ch.Put, e)
		}
	}
	return ch, rep, nil
}

// oldDigest returns the content digest of old message num, nil when the
// old server's copy cannot be compared.
func (im *importer) oldDigest(ctx context.Context, num int) (*[32]byte, error) {
	if s, ok := im.oldDigests[num]; ok {
		return s, nil
	}
	raw, ok, err := im.old.Digest(ctx, num)
	if err != nil {
		return nil, err
	}
	var s *[32]byte
	if ok {
		s = &raw
	}
	im.oldDigests[num] = s
	return s, nil
}

// upDigest returns the content digests (contentDigest) of uids.
func (im *importer) upDigest(ctx context.Context, uids []uint32) (map[uint32][32]byte, error) {
	var need []uint32
	for _, u := range uids {
		if _, ok := im.upDigests[u]; !ok {
			need = append(need, u)
		}
	}
	for len(need) > 0 {
		chunk := need[:min(len(need), 200)]
		need = need[len(chunk):]
		err := im.conn.FetchBodies(ctx, chunk, func(uid uint32, body io.Reader) error {
			d := newCRLFDigest()
			if _, err := io.Copy(d, body); err != nil {
				return err
			}
			im.upDigests[uid] = d.Sum()
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("content of upstream messages that share Message-ID, Date and size: %w", err)
		}
	}
	out := make(map[uint32][32]byte, len(uids))
	for _, u := range uids {
		if s, ok := im.upDigests[u]; ok {
			out[u] = s
		}
	}
	return out, nil
}

// crlfDigest hashes a message with every line end made CRLF (a bare LF
// gains its CR) and a CRLF added after a last line without one: the form
// in which a POP3 server sends it, whatever the store keeps.
type crlfDigest struct {
	h    hash.Hash
	last byte
	n    int64
}

func newCRLFDigest() *crlfDigest { return &crlfDigest{h: sha256.New()} }

func (d *crlfDigest) Write(p []byte) (int, error) {
	start := 0
	for i, c := range p {
		if c != '\n' {
			continue
		}
		prev := d.last
		if i > 0 {
			prev = p[i-1]
		}
		if prev != '\r' {
			d.h.Write(p[start:i])
			d.h.Write([]byte("\r"))
			start = i
		}
	}
	d.h.Write(p[start:])
	if len(p) > 0 {
		d.last = p[len(p)-1]
		d.n += int64(len(p))
	}
	return len(p), nil
}

// Sum returns the digest of what was written.
func (d *crlfDigest) Sum() [32]byte {
	if d.n > 0 && d.last != '\n' {
		d.h.Write([]byte("\r\n"))
	}
	var s [32]byte
	d.h.Sum(s[:0])
	return s
}

// contentDigest is the digest crlfDigest takes of b.
func contentDigest(b []byte) [32]byte {
	d := newCRLFDigest()
	d.Write(b)
	return d.Sum()
}

// validUIDL reports whether u may be a UIDL (RFC 1939 §7): 1 to 70
// characters in 0x21-0x7E.
func validUIDL(u string) bool {
	if len(u) == 0 || len(u) > 70 {
		return false
	}
	for i := 0; i < len(u); i++ {
		if u[i] < 0x21 || u[i] > 0x7e {
			return false
		}
	}
	return true
}

// normalDate returns a Date field's instant in UTC, or, when it does not
// parse, its words joined by one space.
func normalDate(v string) string {
	if t, err := mail.ParseDate(v); err == nil {
		return t.UTC().Format(time.RFC3339)
	}
	return strings.Join(strings.Fields(v), " ")
}

func held(holder map[string]int, u string) bool {
	_, ok := holder[u]
	return ok
}
