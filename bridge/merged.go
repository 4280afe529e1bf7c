package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// Merged maildrops ([[maildrops]]): one POP3 maildrop that lists the
// messages of several mailboxes, its sources, one after the other in the
// configured order. Each source is a maildrop of its own underneath (a
// *maildrop with its own upstream connection, mailbox record, UIDVALIDITY
// handling, client record, pending UPDATE and delete policy target); the
// merged maildrop only numbers their messages and hands each command to
// the source the message came from.
//
//   - UIDLs. The source that is the login's own maildrop (upstream.mailbox,
//     or the [[upstreams]] entry's mailbox, of the login's account) lists
//     its messages under their plain UIDLs, exactly as without merging, so
//     turning merging on downloads nothing again. Every other source gets a
//     number when it is first seen, stored (sourceNumbers) and never
//     changed or reused, whatever the order of the sources later; its
//     messages are listed as "s<number>-<plain UIDL>" (mergedUIDL).
//   - One lock: the maildrop lock of the login's own (mailbox, device)
//     covers the merged maildrop. The client records of the other sources
//     are the merged maildrop's own (device "<device>/<owner record>"), so
//     no other session writes them.
//   - All or nothing: every source is connected before anything is synced
//     or replayed, and a source that cannot be reached (its login, its
//     SELECT, its sync) fails the login with [SYS/TEMP]; the client never
//     gets a partial list. A wrong password of the login's own account is
//     still [AUTH].
//   - Dedup (off by default): a message whose Message-ID a message of an
//     earlier source has is left out of the list. DELE of the listed one
//     applies the policy to it alone; the duplicates left out stay upstream
//     as they are and are hidden from this device (its client records), so
//     they do not come back once the listed one is gone.

// mergedDrop is a merged maildrop: a pop3.Maildrop over the maildrops of
// its sources.
type mergedDrop struct {
	log   *zap.Logger
	parts []*mergedPart
	msgs  []pop3.Message
	at    []mergedRef         // message n is at[n-1]
	dups  map[int][]mergedRef // listing index → the duplicates left out (dedup)
	// release frees the maildrop lock and what the login holds (set by
	// openMerged).
	release   func()
	closeOnce sync.Once
}

// mergedRef is message n (1-based) of the maildrop of parts[part].
type mergedRef struct{ part, n int }

// mergedPart is one source of a merged maildrop.
type mergedPart struct {
	src    MaildropSource
	number uint32 // 0: the login's own maildrop (plain UIDLs)
	md     *maildrop
}

// Errors of merged logins. Whatever keeps a source from being read is
// temporary for the client; a configuration that cannot work is permanent.
var (
	errMergedNotEnrolled = &pop3.Error{Code: pop3.CodeSysPerm, Text: "this maildrop merges mailboxes of other accounts, which only an enrolled account may do"}
	errMergedSame        = &pop3.Error{Code: pop3.CodeSysPerm, Text: "this merged maildrop names one mailbox twice"}
)

// sourceUnavailable is the answer when a source cannot be reached.
func sourceUnavailable(src MaildropSource, err error) error {
	var pe *pop3.Error
	if errors.As(err, &pe) && pe.Code == pop3.CodeSysPerm && (pe == errMergedNotEnrolled || pe == errNoUpstream || pe == errOAuthClient) {
		return pe
	}
	return &pop3.Error{Code: pop3.CodeSysTemp, Text: "mailbox " + strconv.Quote(src.String()) + " of this merged maildrop is unavailable, try again later", Err: err}
}

// openMerged serves the login of (account, device), resolved to t, from
// the merged maildrop mc: it connects every source, takes the one maildrop
// lock, syncs each source (and replays its pending UPDATE) and builds the
// list. done is called when the maildrop is released or the login fails.
func (b *Bridge) openMerged(ctx context.Context, log *zap.Logger, account, device string, t target, mc *MaildropConfig, done func()) (pop3.Maildrop, error) {
	m := &mergedDrop{log: log, release: done}
	fail := func(err error) (pop3.Maildrop, error) {
		m.Close()
		return nil, err
	}
	// Connect every source, all at once, before anything is synced or
	// replayed: a source that cannot be reached changes nothing.
	type connected struct {
		p   *mergedPart
		own bool
		err error
	}
	conns := make([]connected, len(mc.Sources))
	var wg sync.WaitGroup
	for i, src := range mc.Sources {
		own := src.Account == "" || b.accountKey(src.Account) == b.accountKey(account)
		wg.Go(func() {
			p, err := b.connectSource(ctx, log, account, device, t, src, own)
			conns[i] = connected{p, own, err}
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c.p != nil {
			m.parts = append(m.parts, c.p) // released by fail, whatever failed
		}
	}
	keys := map[string]bool{}
	for i, src := range mc.Sources {
		p, own, err := conns[i].p, conns[i].own, conns[i].err
		if err != nil {
			var pe *pop3.Error
			if own && errors.As(err, &pe) && (pe.Code == pop3.CodeAuth || pe.Code == pop3.CodeLoginDelay) {
				// The login's own credentials, or its account's
				// back-off: the client is told so.
				return fail(err)
			}
			log.Warn("a source of the merged maildrop cannot be reached; the login fails", zap.Stringer("source", src), zap.Error(err))
			return fail(sourceUnavailable(src, err))
		}
		if keys[p.md.key.Mailbox] {
			log.Error("the merged maildrop names one mailbox twice", zap.Stringer("source", src))
			return fail(errMergedSame)
		}
		keys[p.md.key.Mailbox] = true
	}
	unlock, err := b.lockMaildrop(ctx, log, state.ClientKey{Mailbox: t.mailboxKey, Client: device})
	if err != nil {
		return fail(err)
	}
	m.release = func() {
		unlock()
		done()
	}
	if t.legacy && keys[t.mailboxKey] {
		if err := b.adoptLegacy(ctx, account, t.mailboxKey, log); err != nil {
			log.Warn("opening the maildrop failed", zap.Error(err))
			return fail(toPOP3(err))
		}
	}
	var others []string
	for _, p := range m.parts {
		if p.md.key.Mailbox != t.mailboxKey {
			others = append(others, p.md.key.Mailbox)
		}
	}
	numbers, err := b.sourceNumbers(ctx, t.mailboxKey, others)
	if err != nil {
		if pe := storeTrouble(log, err); pe != nil {
			return fail(pe)
		}
		return fail(&pop3.Error{Code: pop3.CodeSysTemp, Text: "state store unavailable, try again later", Err: err})
	}
	for _, p := range m.parts {
		p.number = numbers[p.md.key.Mailbox]
		if err := p.md.open(ctx); err != nil {
			if pe := storeTrouble(log, err); pe != nil {
				return fail(pe)
			}
			log.Warn("opening a source of the merged maildrop failed", zap.Stringer("source", p.src), zap.Error(err))
			return fail(sourceUnavailable(p.src, err))
		}
	}
	var ids [][]string
	if mc.Dedup {
		if ids, err = m.messageIDs(ctx); err != nil {
			return fail(err)
		}
	}
	m.list(ids)
	return m, nil
}

// connectSource logs in to the account of src and selects its mailbox,
// and returns the source with its maildrop, not yet opened. own says src
// is a mailbox of the login's account (t's).
func (b *Bridge) connectSource(ctx context.Context, log *zap.Logger, account, device string, t target, src MaildropSource, own bool) (*mergedPart, error) {
	st, acct := t, account
	var forget func()
	if !own {
		if !t.enrolled {
			return nil, errMergedNotEnrolled
		}
		ot, err := b.sourceTarget(ctx, log, src.Account)
		if err != nil {
			return nil, err
		}
		st, acct, forget = ot, src.Account, ot.done
	}
	open := st.open
	if src.Mailbox != st.mailbox {
		open = reselect(st.open, src.Mailbox)
	}
	if st.prov == nil {
		st.prov = b.prov
	}
	if st.acct == "" {
		st.acct = b.accountKey(acct)
	}
	conn, status, freeSlot, err := b.openAdmitted(ctx, log, acct, st.acct, st.prov, open)
	if err != nil {
		if forget != nil {
			forget()
		}
		return nil, err
	}
	key := state.ClientKey{Mailbox: st.keyFor(src.Mailbox), Client: device}
	if key.Mailbox != t.mailboxKey {
		// The merged maildrop's own view of this source: never the
		// record of another login of that mailbox.
		key.Client = mergedClient(device, t.mailboxKey)
	}
	md := &maildrop{
		d: b.drops.withTimeout(st.timeout), prov: st.prov, log: log.With(zap.Stringer("source", src)), key: key, account: acct, acct: st.acct, reopen: open,
		conn: conn, status: status, measured: map[string]int64{},
		release: func() {
			freeSlot()
			if forget != nil {
				forget()
			}
		},
	}
	return &mergedPart{src: src, md: md}, nil
}

// reselect is open followed by a SELECT of mailbox.
func reselect(open upstreamOpener, mailbox string) upstreamOpener {
	return func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error) {
		conn, _, err := open(ctx, account)
		if err != nil {
			return nil, upstream.Status{}, err
		}
		st, err := conn.Select(ctx, mailbox)
		if err != nil {
			conn.Close()
			return nil, upstream.Status{}, err
		}
		return conn, st, nil
	}
}

// sourceTarget is the target of another enrolled account, a source of an
// enrolled login's merged maildrop: its grant is opened with the server key
// (accounts.server_key_file), as no app password of it is at hand.
func (b *Bridge) sourceTarget(ctx context.Context, log *zap.Logger, name string) (target, error) {
	e := b.enrolled
	if e.reg == nil {
		return target{}, errMergedNotEnrolled
	}
	info, err := e.reg.Lookup(ctx, name)
	if err != nil {
		return target{}, fmt.Errorf("looking up the source account %s: %w", name, err)
	}
	up := e.upstreams[info.Upstream]
	if up == nil {
		log.Error("a source account's upstream is not in [[upstreams]]", zap.String("source_account", name), zap.String("upstream", info.Upstream))
		return target{}, errNoUpstream
	}
	sess, err := e.reg.Unlock(ctx, name)
	if err != nil {
		return target{}, fmt.Errorf("opening the source account %s with the server key: %w", name, err)
	}
	t, err := b.enrolledOpen(log, info, up, sess)
	if err != nil {
		sess.Close()
		return target{}, err
	}
	return t, nil
}

// lockMaildrop takes the maildrop lock of key; errors are POP3 answers.
func (b *Bridge) lockMaildrop(ctx context.Context, log *zap.Logger, key state.ClientKey) (func(), error) {
	done := b.metrics.timeStore("lock")
	release, err := b.store.Lock(ctx, key)
	done()
	if err == nil {
		return b.metrics.lockTaken(release), nil
	}
	if errors.Is(err, state.ErrLocked) {
		return nil, pop3.ErrInUse
	}
	if pe := storeTrouble(log, err); pe != nil {
		return nil, pe
	}
	return nil, &pop3.Error{Code: pop3.CodeSysTemp, Text: "state store unavailable, try again later", Err: err}
}

// sourcesRecord names the record that keeps the numbers of the sources of
// the merged maildrops of owner (the record of the login's own maildrop):
// one entry per source, its UID the number, its UIDL the name of the
// source's mailbox record. Every device of the account shares it.
func sourcesRecord(owner string) string { return "merged/" + owner }

// sourceNumbers returns the number of each of keys (mailbox record names)
// among the sources of owner, giving the next free number to each one not
// seen before, in the order of keys. A number, once given, is never
// changed nor given to another source.
func (b *Bridge) sourceNumbers(ctx context.Context, owner string, keys []string) (map[string]uint32, error) {
	out := map[string]uint32{}
	if len(keys) == 0 {
		return out, nil
	}
	_, err := b.records.update(ctx, sourcesRecord(owner), func(cur *state.Mailbox) (state.MailboxChange, error) {
		clear(out)
		next := uint32(1)
		for _, e := range cur.Entries {
			out[e.UIDL] = e.UID
			next = max(next, e.UID+1)
		}
		ch := state.MailboxChange{}
		for _, k := range keys {
			if _, ok := out[k]; !ok {
				out[k] = next
				ch.Put = append(ch.Put, state.Entry{UID: next, UIDL: k})
				next++
			}
		}
		if len(ch.Put) == 0 {
			return ch, errUnchanged
		}
		ch.Markers = state.Markers{UIDNext: next, NumMessages: uint32(len(cur.Entries) + len(ch.Put))}
		return ch, nil
	})
	return out, err
}

// mergedClient is the device of the client record a merged maildrop of
// owner (the record of the login's own mailbox) keeps in another source's
// mailbox record for device: its own view, never another login's.
func mergedClient(device, owner string) string { return device + "/" + owner }

// maxUIDL is the longest UIDL RFC 1939 §7 allows.
const maxUIDL = 70

// mergedUIDL is the UIDL a message whose plain UIDL is uidl has in a
// merged maildrop, in the source numbered number: the plain one for the
// login's own maildrop (number 0), else "s<number>-<uidl>", or, where that
// would be longer than 70 characters, "s<number>=" and a digest of uidl.
func mergedUIDL(number uint32, uidl string) string {
	if number == 0 {
		return uidl
	}
	prefix := "s" + strconv.FormatUint(uint64(number), 10)
	if len(prefix)+1+len(uidl) <= maxUIDL {
		return prefix + "-" + uidl
	}
	sum := sha256.Sum256([]byte(uidl))
	return prefix + "=" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// messageIDs returns the Message-ID of each listed message of each source
// ("" when it has none), for dedup.
func (m *mergedDrop) messageIDs(ctx context.Context) ([][]string, error) {
	ids := make([][]string, len(m.parts))
	for i, p := range m.parts {
		at := make(map[uint32]int, len(p.md.uids))
		for j, u := range p.md.uids {
			at[u] = j
		}
		ids[i] = make([]string, len(p.md.uids))
		if len(p.md.uids) == 0 {
			continue
		}
		err := p.md.conn.FetchInfo(ctx, p.md.uids, func(msg upstream.Msg) error {
			if j, ok := at[msg.UID]; ok {
				ids[i][j] = msg.MessageID
			}
			return nil
		})
		if err != nil {
			m.log.Warn("fetching the Message-IDs for dedup failed; the login fails", zap.Stringer("source", p.src), zap.Error(err))
			return nil, sourceUnavailable(p.src, err)
		}
	}
	return ids, nil
}

// list builds the session's message list: each source's messages in turn,
// under their merged UIDLs; with ids (dedup), a message whose Message-ID an
// earlier source listed is left out and remembered as that one's
// duplicate.
func (m *mergedDrop) list(ids [][]string) {
	seen := map[string]bool{}
	first := map[string]int{} // Message-ID → listing index
	m.dups = map[int][]mergedRef{}
	for pi, p := range m.parts {
		for i, msg := range p.md.msgs {
			var mid string
			if ids != nil {
				mid = ids[pi][i]
			}
			if at, ok := first[mid]; ok && mid != "" && m.at[at].part != pi {
				m.dups[at] = append(m.dups[at], mergedRef{pi, i + 1})
				continue
			}
			u := mergedUIDL(p.number, msg.UIDL)
			if seen[u] {
				// Only a UIDL imported into the login's own mailbox can
				// look like a numbered one; it keeps the UIDL.
				m.log.Error("a message of a merged maildrop has the UIDL of another one and is not listed", zap.Stringer("source", p.src), zap.String("uidl", u))
				continue
			}
			seen[u] = true
			m.msgs = append(m.msgs, pop3.Message{Size: msg.Size, UIDL: u})
			m.at = append(m.at, mergedRef{pi, i + 1})
			if _, ok := first[mid]; !ok && mid != "" {
				first[mid] = len(m.msgs) - 1
			}
		}
	}
}

// List implements pop3.Maildrop.
func (m *mergedDrop) List() []pop3.Message { return m.msgs }

// Retr implements pop3.Maildrop: the source's maildrop sends it.
func (m *mergedDrop) Retr(ctx context.Context, n int, cw pop3.MessageWriter) error {
	r := m.at[n-1]
	return m.parts[r.part].md.Retr(ctx, r.n, cw)
}

// Top implements pop3.Maildrop.
func (m *mergedDrop) Top(ctx context.Context, n, lines int, cw pop3.MessageWriter) error {
	r := m.at[n-1]
	return m.parts[r.part].md.Top(ctx, r.n, lines, cw)
}

// Commit implements pop3.Maildrop: each source carries out the UPDATE of
// its own messages, with its own intent, update lock and policy target
// (maildrop.Commit), one source after the other. A source that fails does
// not stop the others; the answer is the first failure, naming its
// mailbox. With dedup, the duplicates of each message deleted are hidden
// from this device once its source confirmed the deletion.
func (m *mergedDrop) Commit(ctx context.Context, deleted []int) error {
	defer m.Close()
	local := make([][]int, len(m.parts))
	for _, n := range deleted {
		r := m.at[n-1]
		local[r.part] = append(local[r.part], r.n)
	}
	var first error
	ok := make([]bool, len(m.parts))
	for i, p := range m.parts {
		err := m.intoItself(ctx, p, len(local[i]) > 0)
		if err == nil {
			err = p.md.Commit(ctx, local[i])
		} else {
			p.md.Close()
		}
		if err == nil {
			ok[i] = true
			continue
		}
		m.log.Warn("the UPDATE of a source of the merged maildrop failed", zap.Stringer("source", p.src), zap.Error(err))
		if first == nil {
			first = err
			var pe *pop3.Error
			if errors.As(err, &pe) {
				first = &pop3.Error{Code: pe.Code, Text: "mailbox " + strconv.Quote(p.src.String()) + ": " + pe.Text, Err: pe.Err}
			}
		}
	}
	hide := map[int][]string{}
	for _, n := range deleted {
		if !ok[m.at[n-1].part] {
			continue
		}
		for _, d := range m.dups[n-1] {
			hide[d.part] = append(hide[d.part], m.parts[d.part].md.msgs[d.n-1].UIDL)
		}
	}
	for pi, uidls := range hide {
		p := m.parts[pi]
		if err := p.md.d.applyClient(ctx, p.md.key, state.ClientChange{Hide: uidls}); err != nil {
			m.log.Warn("hiding the duplicates of deleted messages failed; they are listed again", zap.Stringer("source", p.src), zap.Error(err))
		}
	}
	return first
}

// intoItself refuses the move policy's DELEs in a source that is the
// Trash they would be moved to (a Trash listed as a source): the move
// would only give them new UIDs, and the client would download them
// again. Nothing is deleted there; the other sources go on.
func (m *mergedDrop) intoItself(ctx context.Context, p *mergedPart, deletes bool) error {
	if !deletes || p.md.d.delete.Policy != PolicyMove {
		return nil
	}
	target, err := p.md.moveTarget(ctx)
	if err != nil {
		return err
	}
	if target == p.src.Mailbox || strings.EqualFold(target, "INBOX") && strings.EqualFold(p.src.Mailbox, "INBOX") {
		m.log.Warn("the move policy cannot move messages of a source into itself; nothing was deleted there (list the Trash as a source with another delete policy)",
			zap.Stringer("source", p.src), zap.String("trash", target))
		return &pop3.Error{Code: pop3.CodeSysPerm, Text: "messages of the Trash cannot be moved to the Trash; nothing was deleted there"}
	}
	return nil
}

// Close implements pop3.Maildrop: every source's maildrop is closed (it
// stores measured sizes and logs out), then the lock is released. It never
// deletes anything.
func (m *mergedDrop) Close() error {
	m.closeOnce.Do(func() {
		for _, p := range m.parts {
			p.md.Close()
		}
		m.release()
	})
	return nil
}
