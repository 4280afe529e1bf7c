package upstream

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
)

// maxCommandLine is the longest command line popbridge sends, in octets
// (RFC 2683 §3.2.1.5 and RFC 7162 §4 advise servers to accept 8000). The
// tag and the command name are counted in cmdOverhead.
const (
	maxCommandLine = 8000
	cmdOverhead    = 64
	minSetBudget   = 1000
)

// setBudget is how many octets a UID set may take in a command whose other
// arguments take tail octets.
func setBudget(tail int) int {
	return maxCommandLine - cmdOverhead - tail
}

// uidChunks sorts uids, drops duplicates and zeros, compresses runs into
// ranges and splits the result into UID sets whose text ("1:5,9,12:20") is
// at most budget octets each.
func uidChunks(uids []uint32, budget int) []imap.UIDSet {
	sorted := slices.Clone(uids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	if len(sorted) > 0 && sorted[0] == 0 {
		sorted = sorted[1:]
	}
	var (
		chunks []imap.UIDSet
		cur    imap.UIDSet
		curLen int
	)
	for i := 0; i < len(sorted); {
		start := sorted[i]
		j := i
		for j+1 < len(sorted) && sorted[j+1] == sorted[j]+1 {
			j++
		}
		stop := sorted[j]
		i = j + 1
		n := decLen(start)
		if stop != start {
			n += 1 + decLen(stop)
		}
		if len(cur) > 0 {
			n++ // the comma
		}
		if len(cur) > 0 && curLen+n > budget {
			chunks = append(chunks, cur)
			cur, curLen = nil, 0
			n-- // no comma at the start of a set
		}
		cur = append(cur, imap.UIDRange{Start: imap.UID(start), Stop: imap.UID(stop)})
		curLen += n
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	return chunks
}

func decLen(n uint32) int { return len(strconv.FormatUint(uint64(n), 10)) }

// checkFlags checks that flags are system flags or keywords that can be
// sent as atoms, and returns their wire length.
func checkFlags(op string, flags []string) ([]imap.Flag, int, error) {
	out := make([]imap.Flag, 0, len(flags))
	n := 0
	for _, f := range flags {
		if !ValidFlag(f) {
			return nil, 0, permError(op, "invalid flag %q", truncate(f, 40))
		}
		out = append(out, imap.Flag(f))
		n += len(f) + 1
	}
	return out, n, nil
}

// ValidFlag reports whether f can be set with STORE: a system flag a
// client may set (\Seen, \Answered, \Flagged, \Deleted, \Draft) or a
// keyword atom (RFC 9051 §2.3.2, flag-keyword) of at most 200 octets.
func ValidFlag(f string) bool {
	switch strings.ToLower(f) {
	case `\seen`, `\answered`, `\flagged`, `\deleted`, `\draft`:
		return true
	}
	if f == "" || len(f) > 200 || strings.HasPrefix(f, `\`) {
		return false
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`(){%*"\]`, c) >= 0 {
			return false
		}
	}
	return true
}

var deletedFlag = []imap.Flag{imap.FlagDeleted}

// storeAdd sends UID STORE set +FLAGS.SILENT (flags) and consumes the
// answer (a server may still send FETCH responses).
func (c *Conn) storeAdd(set imap.UIDSet, flags []imap.Flag) error {
	return c.client.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: flags}, nil).Close()
}

// AddFlags sends UID STORE uids +FLAGS.SILENT (flags), split into commands
// of at most 8 KB. Flags must be system flags ("\Seen") or atoms
// ("$POP3Deleted"); anything else is KindPerm and nothing is sent.
func (c *Conn) AddFlags(ctx context.Context, uids []uint32, flags []string) error {
	const op = "store"
	fl, flen, err := checkFlags(op, flags)
	if err != nil {
		return err
	}
	budget := setBudget(len(" +FLAGS.SILENT ()") + flen)
	if budget < minSetBudget {
		return permError(op, "too many flags")
	}
	sets := uidChunks(uids, budget)
	if len(sets) == 0 || len(fl) == 0 {
		return nil
	}
	if err := c.alive(op); err != nil {
		return err
	}
	w := c.watch(ctx)
	for _, set := range sets {
		w.touch()
		if err = c.storeAdd(set, fl); err != nil {
			break
		}
	}
	return w.end(op, err, phaseCommand)
}

// Expunge sends UID STORE uids +FLAGS.SILENT (\Deleted) and then
// UID EXPUNGE uids, in chunks of at most 8 KB, so that exactly these
// messages go: a message another client marked \Deleted stays. Without
// UIDPLUS or IMAP4rev2 it returns KindPerm and sends nothing. It never
// sends a bare EXPUNGE or CLOSE.
//
// Before it flags a chunk, it asks which of those messages carry \Deleted
// already (UID FETCH set (FLAGS)). When the server refuses the UID STORE or
// the UID EXPUNGE of the chunk (a NO or BAD: it answered, so the
// connection still works), Expunge takes \Deleted back from the messages
// that did not carry it (UID STORE -FLAGS.SILENT (\Deleted)), so that no
// other client's EXPUNGE removes them later; a \Deleted set by someone
// else stays. Chunks before the refused one are expunged.
func (c *Conn) Expunge(ctx context.Context, uids []uint32) error {
	const op = "expunge"
	if err := c.alive(op); err != nil {
		return err
	}
	if !c.HasUIDPlus() {
		return permError(op, "server has neither UIDPLUS nor IMAP4rev2: no UID EXPUNGE, and a bare EXPUNGE would remove other clients' deleted mail")
	}
	sets := uidChunks(uids, setBudget(len(" +FLAGS.SILENT (\\Deleted)")))
	if len(sets) == 0 {
		return nil
	}
	w := c.watch(ctx)
	var err error
	for _, set := range sets {
		w.touch()
		if err = c.expungeSet(w, set); err != nil {
			break
		}
	}
	return w.end(op, err, phaseCommand)
}

// expungeSet is one chunk of Expunge.
func (c *Conn) expungeSet(w *watch, set imap.UIDSet) error {
	had, err := c.flagged(set, imap.FlagDeleted)
	if err != nil {
		return err
	}
	w.touch()
	if err = c.storeAdd(set, deletedFlag); err == nil {
		w.touch()
		err = c.client.UIDExpunge(set).Close()
	}
	var ie *imap.Error
	if err == nil || !errors.As(err, &ie) {
		// Done, or the connection broke: a replay finishes it.
		return err
	}
	all, _ := set.Nums()
	ours := make([]uint32, 0, len(all))
	for _, u := range all {
		if !had[uint32(u)] {
			ours = append(ours, uint32(u))
		}
	}
	for _, s := range uidChunks(ours, setBudget(len(" -FLAGS.SILENT (\\Deleted)"))) {
		w.touch()
		if rerr := c.client.Store(s, &imap.StoreFlags{Op: imap.StoreFlagsDel, Silent: true, Flags: deletedFlag}, nil).Close(); rerr != nil {
			c.log.Warn("taking back \\Deleted after a refused UID EXPUNGE failed", zap.Stringer("uids", s), zap.Error(rerr))
			break
		}
	}
	return err
}

// flagged sends UID FETCH set (UID FLAGS) and returns the UIDs of the
// messages that carry flag.
func (c *Conn) flagged(set imap.UIDSet, flag imap.Flag) (map[uint32]bool, error) {
	out := make(map[uint32]bool)
	cmd := c.client.Fetch(set, &imap.FetchOptions{UID: true, Flags: true})
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		var uid uint32
		var has bool
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = uint32(it.UID)
			case imapclient.FetchItemDataFlags:
				for _, f := range it.Flags {
					if strings.EqualFold(string(f), string(flag)) {
						has = true
					}
				}
			}
		}
		if uid != 0 && has {
			out[uid] = true
		}
	}
	return out, cmd.Close()
}

// deleteSet sends UID STORE set +FLAGS.SILENT (\Deleted) and UID EXPUNGE set.
func (c *Conn) deleteSet(set imap.UIDSet) error {
	if err := c.storeAdd(set, deletedFlag); err != nil {
		return err
	}
	return c.client.UIDExpunge(set).Close()
}

// Move sends UID MOVE uids dest when the server has MOVE (or IMAP4rev2).
// Otherwise, when it has UIDPLUS, it sends UID COPY uids dest, then
// UID STORE uids +FLAGS.SILENT (\Deleted) and UID EXPUNGE uids, so that only
// these messages leave the mailbox. With neither it returns KindPerm and
// sends nothing. UID sets are split into commands of at most 8 KB. A dest
// that does not exist is KindPerm (NO [TRYCREATE]).
//
// A failure midway leaves the earlier chunks moved; in the COPY fallback, a
// failure after the COPY of a chunk leaves copies in dest (MoveWith lets the
// caller record them, so that a retry does not copy them again).
func (c *Conn) Move(ctx context.Context, uids []uint32, dest string) error {
	return c.MoveWith(ctx, uids, dest, nil)
}

// MoveOptions tune the COPY fallback of MoveWith; UID MOVE ignores them.
type MoveOptions struct {
	// Copied are UIDs that an earlier attempt copied to dest already: they
	// are not copied again, only flagged \Deleted and expunged.
	Copied []uint32
	// OnCopy, when set, is called after each UID COPY that succeeded, with
	// the source UIDs the server copied (its COPYUID answer; every UID of
	// the command when it sent none), before they are flagged and
	// expunged. It should record them where a retry finds them.
	OnCopy func(src []uint32)
}

// MoveWith is Move with opts (nil: none).
func (c *Conn) MoveWith(ctx context.Context, uids []uint32, dest string, opts *MoveOptions) error {
	const op = "move"
	if err := c.alive(op); err != nil {
		return err
	}
	useMove := c.HasMove()
	if !useMove && !c.HasUIDPlus() {
		return permError(op, "server has neither MOVE nor UIDPLUS: refusing COPY + bare EXPUNGE")
	}
	if len(dest) > 1000 {
		return permError(op, "mailbox name too long")
	}
	if opts == nil {
		opts = &MoveOptions{}
	}
	copied := make(map[uint32]bool, len(opts.Copied))
	for _, u := range opts.Copied {
		copied[u] = true
	}
	// A mailbox name may grow when encoded (quoting, modified UTF-7).
	sets := uidChunks(uids, setBudget(3*len(dest)+len(" +FLAGS.SILENT (\\Deleted)")))
	if len(sets) == 0 {
		return nil
	}
	w := c.watch(ctx)
	var err error
	if useMove && !c.client.Caps().Has(imap.CapMove) {
		// imapclient's Move decides on its own copy of the capabilities
		// and would fall back to COPY + EXPUNGE without UIDPLUS: never let
		// it.
		err = tempError(op, "capabilities changed")
	}
	for _, set := range sets {
		if err != nil {
			break
		}
		w.touch()
		if useMove {
			_, err = c.client.Move(set, dest).Wait()
			continue
		}
		if err = c.copySet(set, dest, copied, opts); err == nil {
			err = c.deleteSet(set)
		}
	}
	return w.end(op, err, phaseCommand)
}

// copySet sends UID COPY for the UIDs of set that are not in copied, and
// tells opts.OnCopy what the server copied.
func (c *Conn) copySet(set imap.UIDSet, dest string, copied map[uint32]bool, opts *MoveOptions) error {
	if len(copied) > 0 {
		var rest imap.UIDSet
		for _, r := range set {
			for u := r.Start; u <= r.Stop; u++ {
				if !copied[uint32(u)] {
					rest.AddNum(u)
				}
				if u == r.Stop {
					break // Stop may be the largest UID
				}
			}
		}
		if len(rest) == 0 {
			return nil
		}
		set = rest
	}
	data, err := c.client.Copy(set, dest).Wait()
	if err != nil || opts.OnCopy == nil {
		return err
	}
	// COPY copies all the messages of the set that exist, or none
	// (RFC 9051 6.4.7); COPYUID names them.
	src := data.SourceUIDs
	if len(src) == 0 {
		src = set
	}
	var done []uint32
	for _, r := range src {
		for u := r.Start; u <= r.Stop && u != 0; u++ {
			done = append(done, uint32(u))
			if u == r.Stop {
				break
			}
		}
	}
	opts.OnCopy(done)
	return nil
}

// SpecialUse sends LIST "" "*" (with RETURN (SPECIAL-USE) when the server
// has SPECIAL-USE and LIST-EXTENDED) and returns the name of the first
// selectable mailbox with attribute attr (e.g. imap.MailboxAttrTrash), or ""
// when there is none.
func (c *Conn) SpecialUse(ctx context.Context, attr imap.MailboxAttr) (string, error) {
	const op = "list"
	if err := c.alive(op); err != nil {
		return "", err
	}
	var opts *imap.ListOptions
	if caps := c.Caps(); caps.Has(imap.CapSpecialUse) && caps.Has(imap.CapListExtended) {
		opts = &imap.ListOptions{ReturnSpecialUse: true}
	}
	w := c.watch(ctx)
	cmd := c.client.List("", "*", opts)
	var found string
	for d := cmd.Next(); d != nil; d = cmd.Next() {
		w.touch()
		if found == "" && hasAttr(d.Attrs, attr) &&
			!hasAttr(d.Attrs, imap.MailboxAttrNoSelect) && !hasAttr(d.Attrs, imap.MailboxAttrNonExistent) {
			found = d.Mailbox
		}
	}
	if err := w.end(op, cmd.Close(), phaseCommand); err != nil {
		return "", err
	}
	return found, nil
}

func hasAttr(attrs []imap.MailboxAttr, attr imap.MailboxAttr) bool {
	for _, a := range attrs {
		if strings.EqualFold(string(a), string(attr)) {
			return true
		}
	}
	return false
}
