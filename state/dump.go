package state

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Exporter is an optional interface of a Store: it walks every record one
// at a time, so that a tool can copy (Export, Import) or check (Check) a
// store of any size with the memory of one entry. fn may read the same
// store (the walks nest) but must not write to it; an error from fn ends
// the walk and is returned. A walk is no snapshot of a store that others
// change meanwhile: run the tools on a store no popbridge is serving.
type Exporter interface {
	// ForEachMailbox calls fn with the name, version and markers of each
	// mailbox record, in the store's order.
	ForEachMailbox(ctx context.Context, fn func(name string, version uint64, mk Markers) error) error
	// ForEachEntry calls fn with each entry of the record of mailbox,
	// ascending by UID; none when there is no record.
	ForEachEntry(ctx context.Context, mailbox string, fn func(Entry) error) error
	// ForEachClient calls fn with the key, the pending UPDATE (nil when
	// none) and the last login (zero when none) of each client record, in
	// the store's order.
	ForEachClient(ctx context.Context, fn func(k ClientKey, p *Pending, lastLogin time.Time) error) error
	// ForEachHidden calls fn with each hidden UIDL of the client record k.
	ForEachHidden(ctx context.Context, k ClientKey, fn func(uidl string) error) error
}

// DumpFormat is the format of Export's output, in its first line.
const DumpFormat = 1

// dumpLine is one line of a dump (JSON lines): a header, then each mailbox
// followed by its entries, then each client followed by its hidden UIDLs.
type dumpLine struct {
	Kind string `json:"kind"` // popbridge-state | mailbox | entry | client | hidden

	Format int `json:"format,omitempty"` // popbridge-state

	Name          string `json:"name,omitempty"` // mailbox
	UIDValidity   uint32 `json:"uidvalidity,omitempty"`
	UIDNext       uint32 `json:"uidnext,omitempty"`
	NumMessages   uint32 `json:"messages,omitempty"`
	HighestModSeq uint64 `json:"highestmodseq,omitempty"`

	UID         uint32 `json:"uid,omitempty"` // entry
	UIDL        string `json:"uidl,omitempty"`
	Size        int64  `json:"size,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Digest      string `json:"digest,omitempty"`

	Mailbox   string    `json:"mailbox,omitempty"` // client
	Client    *string   `json:"client,omitempty"`
	Pending   *Pending  `json:"pending,omitempty"`
	LastLogin time.Time `json:"last_login,omitzero"` // absent in dumps made before it was recorded
}

// DumpStats counts what Export wrote or Import read.
type DumpStats struct {
	Mailboxes, Entries, Clients, Hidden, Pending int
}

// Export writes every record of ex to w as JSON lines (one record or entry
// a line), streaming: it holds one entry at a time.
func Export(ctx context.Context, ex Exporter, w io.Writer) (DumpStats, error) {
	var st DumpStats
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(dumpLine{Kind: "popbridge-state", Format: DumpFormat}); err != nil {
		return st, err
	}
	err := ex.ForEachMailbox(ctx, func(name string, _ uint64, mk Markers) error {
		st.Mailboxes++
		if err := enc.Encode(dumpLine{Kind: "mailbox", Name: name, UIDValidity: mk.UIDValidity, UIDNext: mk.UIDNext,
			NumMessages: mk.NumMessages, HighestModSeq: mk.HighestModSeq}); err != nil {
			return err
		}
		return ex.ForEachEntry(ctx, name, func(e Entry) error {
			st.Entries++
			return enc.Encode(dumpLine{Kind: "entry", UID: e.UID, UIDL: e.UIDL, Size: e.Size, Fingerprint: e.Fingerprint, Digest: e.Digest})
		})
	})
	if err != nil {
		return st, fmt.Errorf("exporting the mailbox records: %w", err)
	}
	err = ex.ForEachClient(ctx, func(k ClientKey, p *Pending, lastLogin time.Time) error {
		st.Clients++
		if p != nil {
			st.Pending++
		}
		if err := enc.Encode(dumpLine{Kind: "client", Mailbox: k.Mailbox, Client: &k.Client, Pending: p, LastLogin: lastLogin.UTC()}); err != nil {
			return err
		}
		return ex.ForEachHidden(ctx, k, func(uidl string) error {
			st.Hidden++
			return enc.Encode(dumpLine{Kind: "hidden", UIDL: uidl})
		})
	})
	if err != nil {
		return st, fmt.Errorf("exporting the client records: %w", err)
	}
	return st, bw.Flush()
}

// importBatch is how many entries or hidden UIDLs Import stores at once.
const importBatch = 1000

// Import reads what Export wrote into st, which must hold none of the
// records it brings (an existing record is an error: import into an empty
// store). It streams: it holds at most importBatch entries at a time, so a
// mailbox record of any size is stored in several changes (its version
// counts them; versions are not carried over, they only order changes).
// On an error, what was read before stays stored.
func Import(ctx context.Context, st Store, r io.Reader) (DumpStats, error) {
	var stats DumpStats
	dec := json.NewDecoder(bufio.NewReader(r))
	var (
		line    int
		mbox    string // the mailbox being read, "" before the first
		inMbox  bool
		mk      Markers
		version uint64
		lastUID uint32
		entries []Entry
		client  *ClientKey
		hidden  []string
	)
	flushEntries := func(final bool) error {
		if !inMbox || (len(entries) < importBatch && !final) {
			return nil
		}
		if len(entries) == 0 && version != 0 {
			return nil
		}
		v, err := st.ApplyMailbox(ctx, mbox, version, MailboxChange{Markers: mk, Put: entries})
		if err != nil {
			return fmt.Errorf("mailbox %q: %w", mbox, err)
		}
		version, entries = v, entries[:0]
		return nil
	}
	flushHidden := func() error {
		if client == nil || len(hidden) == 0 {
			return nil
		}
		if err := st.ApplyClient(ctx, *client, ClientChange{Hide: hidden}); err != nil {
			return fmt.Errorf("client %q of mailbox %q: %w", client.Client, client.Mailbox, err)
		}
		hidden = hidden[:0]
		return nil
	}
	for {
		var l dumpLine
		err := dec.Decode(&l)
		if errors.Is(err, io.EOF) {
			break
		}
		line++
		if err != nil {
			return stats, fmt.Errorf("line %d: %w", line, err)
		}
		if line == 1 {
			if l.Kind != "popbridge-state" || l.Format != DumpFormat {
				return stats, fmt.Errorf("line 1: not a popbridge state dump of format %d", DumpFormat)
			}
			continue
		}
		fail := func(err error) (DumpStats, error) { return stats, fmt.Errorf("line %d: %w", line, err) }
		switch l.Kind {
		case "mailbox":
			if err := flushEntries(true); err != nil {
				return fail(err)
			}
			if client != nil {
				return fail(errors.New("a mailbox after the client records"))
			}
			cur, err := mailboxVersion(ctx, st, l.Name)
			if err != nil {
				return fail(err)
			}
			if cur != 0 {
				return fail(fmt.Errorf("mailbox %q already has a record in the target store: import into an empty store", l.Name))
			}
			mbox, inMbox, version, lastUID = l.Name, true, 0, 0
			mk = Markers{UIDValidity: l.UIDValidity, UIDNext: l.UIDNext, NumMessages: l.NumMessages, HighestModSeq: l.HighestModSeq}
			stats.Mailboxes++
		case "entry":
			if !inMbox || client != nil {
				return fail(errors.New("an entry outside a mailbox"))
			}
			if l.UID <= lastUID || l.UIDL == "" {
				return fail(fmt.Errorf("mailbox %q: entry UID %d after UID %d, or without a UIDL", mbox, l.UID, lastUID))
			}
			lastUID = l.UID
			entries = append(entries, Entry{UID: l.UID, UIDL: l.UIDL, Size: l.Size, Fingerprint: l.Fingerprint, Digest: l.Digest})
			stats.Entries++
			if err := flushEntries(false); err != nil {
				return fail(err)
			}
		case "client":
			if err := flushEntries(true); err != nil {
				return fail(err)
			}
			inMbox = false
			if err := flushHidden(); err != nil {
				return fail(err)
			}
			if l.Client == nil {
				return fail(errors.New("a client record without its client"))
			}
			k := ClientKey{Mailbox: l.Mailbox, Client: *l.Client}
			cur, err := st.LoadClient(ctx, k)
			if err != nil {
				return fail(err)
			}
			if cur.Pending != nil || len(cur.Hidden) > 0 || !cur.LastLogin.IsZero() {
				return fail(fmt.Errorf("client %q of mailbox %q already has a record in the target store: import into an empty store", k.Client, k.Mailbox))
			}
			client = &k
			stats.Clients++
			if l.Pending != nil {
				stats.Pending++
			}
			if l.Pending != nil || !l.LastLogin.IsZero() {
				if err := st.ApplyClient(ctx, k, ClientChange{SetPending: l.Pending, LastLogin: l.LastLogin}); err != nil {
					return fail(err)
				}
			}
		case "hidden":
			if client == nil || l.UIDL == "" {
				return fail(errors.New("a hidden UIDL outside a client record, or empty"))
			}
			hidden = append(hidden, l.UIDL)
			stats.Hidden++
			if len(hidden) >= importBatch {
				if err := flushHidden(); err != nil {
					return fail(err)
				}
			}
		default:
			return fail(fmt.Errorf("unknown kind %q", l.Kind))
		}
	}
	if line == 0 {
		return stats, errors.New("empty input: not a popbridge state dump")
	}
	if err := flushEntries(true); err != nil {
		return stats, err
	}
	return stats, flushHidden()
}

// mailboxVersion returns the version of the record of mailbox (0: none).
func mailboxVersion(ctx context.Context, st Store, mailbox string) (uint64, error) {
	if v, ok := st.(Versioner); ok {
		return v.MailboxVersion(ctx, mailbox)
	}
	m, err := st.LoadMailbox(ctx, mailbox)
	if err != nil {
		return 0, err
	}
	return m.Version, nil
}

// Problem is one broken invariant Check found.
type Problem struct {
	Mailbox string
	Client  *string // nil for a problem of the mailbox record
	Text    string
}

func (p Problem) String() string {
	if p.Client != nil {
		return fmt.Sprintf("client %q of mailbox %q: %s", *p.Client, p.Mailbox, p.Text)
	}
	return fmt.Sprintf("mailbox %q: %s", p.Mailbox, p.Text)
}

// Check verifies the invariants of the records of ex and calls report for
// each problem; it returns how many it found. The invariants:
//
//   - a mailbox record's entries ascend by UID, each UID once, below the
//     record's UIDNEXT (when known); each has a UIDL, and no UIDL is
//     given twice;
//   - every client record belongs to a mailbox record (no orphans);
//   - a pending UPDATE has a known policy, a UIDL for each UID, and each
//     of its UIDLs is in the mailbox record, or its absence is explained:
//     the message left the mailbox after the UPDATE was decided (its UID
//     is below the record's UIDNEXT in the same UIDVALIDITY), or the
//     UIDVALIDITY changed since (the replay re-matches by identity).
//
// Check holds the UIDLs of one mailbox at a time (to find duplicates) and
// the names of the mailboxes.
func Check(ctx context.Context, ex Exporter, report func(Problem)) (int, error) {
	n := 0
	add := func(p Problem) { n++; report(p) }
	markers := map[string]Markers{}
	err := ex.ForEachMailbox(ctx, func(name string, _ uint64, mk Markers) error {
		markers[name] = mk
		seen := map[string]uint32{}
		var last uint32
		first := true
		return ex.ForEachEntry(ctx, name, func(e Entry) error {
			switch {
			case !first && e.UID == last:
				add(Problem{Mailbox: name, Text: fmt.Sprintf("UID %d is listed twice", e.UID)})
			case !first && e.UID < last:
				add(Problem{Mailbox: name, Text: fmt.Sprintf("UID %d comes after UID %d (entries must ascend)", e.UID, last)})
			}
			if mk.UIDNext != 0 && e.UID >= mk.UIDNext {
				add(Problem{Mailbox: name, Text: fmt.Sprintf("UID %d is not below the record's UIDNEXT %d", e.UID, mk.UIDNext)})
			}
			if e.UIDL == "" {
				add(Problem{Mailbox: name, Text: fmt.Sprintf("UID %d has no UIDL", e.UID)})
			} else if other, dup := seen[e.UIDL]; dup {
				add(Problem{Mailbox: name, Text: fmt.Sprintf("UIDL %q is given to UID %d and UID %d", e.UIDL, other, e.UID)})
			} else {
				seen[e.UIDL] = e.UID
			}
			first, last = false, e.UID
			return nil
		})
	})
	if err != nil {
		return n, err
	}
	err = ex.ForEachClient(ctx, func(k ClientKey, p *Pending, _ time.Time) error {
		client := k.Client
		mk, ok := markers[k.Mailbox]
		if !ok {
			add(Problem{Mailbox: k.Mailbox, Client: &client, Text: "orphaned: its mailbox has no record"})
			return nil
		}
		if p == nil {
			return nil
		}
		if !slices.Contains([]string{"move", "expunge", "flag", "hide"}, p.Policy) {
			add(Problem{Mailbox: k.Mailbox, Client: &client, Text: fmt.Sprintf("pending UPDATE with unknown policy %q", p.Policy)})
		}
		if len(p.UIDs) != len(p.UIDLs) {
			add(Problem{Mailbox: k.Mailbox, Client: &client, Text: fmt.Sprintf("pending UPDATE with %d UIDs and %d UIDLs", len(p.UIDs), len(p.UIDLs))})
			return nil
		}
		want := make(map[string]uint32, len(p.UIDLs))
		for i, u := range p.UIDLs {
			want[u] = p.UIDs[i]
		}
		if err := ex.ForEachEntry(ctx, k.Mailbox, func(e Entry) error {
			delete(want, e.UIDL)
			return nil
		}); err != nil {
			return err
		}
		for uidl, uid := range want {
			if p.UIDValidity != mk.UIDValidity || (mk.UIDNext != 0 && uid < mk.UIDNext) {
				continue // gone upstream since, or re-matched at the replay
			}
			add(Problem{Mailbox: k.Mailbox, Client: &client, Text: fmt.Sprintf("pending UIDL %q (UID %d) is neither in the mailbox record nor below its UIDNEXT %d", uidl, uid, mk.UIDNext)})
		}
		return nil
	})
	return n, err
}
