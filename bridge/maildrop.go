package bridge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// The bound of a pending UPDATE's replays: after maxReplayAttempts failed
// attempts upstream (the one at QUIT included), or once it is maxReplayAge
// old, a pending UPDATE is dropped with a log line, and its messages stay
// as they are upstream.
const (
	maxReplayAttempts = 10
	maxReplayAge      = 7 * 24 * time.Hour
)

// maildrop is one POP3 session's view of an upstream mailbox. Its message
// list is fixed at login (invariant 9). The pop3 package calls it from one
// goroutine.
type maildrop struct {
	d       *maildropDeps
	prov    *providerState // the target upstream's profile, budgets and back-off
	log     *zap.Logger
	key     state.ClientKey
	account string
	acct    string         // the account's key in prov (target.acct)
	reopen  upstreamOpener // logs in again with the session's credentials; never logged

	conn   *upstream.Conn
	status upstream.Status

	rec      *state.Mailbox // the record the message list was built from
	pending  *state.Pending // an UPDATE still pending after the replay at login, or nil
	msgs     []pop3.Message
	uids     []uint32
	measured map[string]int64 // UIDL → octets RETR really sent, where they differ from the record

	target    string     // the mailbox of the move policy, once known
	ahead     *readAhead // the read-ahead of sequential RETRs, or nil
	lastRetr  int        // the message number of the last RETR
	arena     []byte     // the read-ahead's buffer, from Bridge.ahead while a batch needs it
	closeOnce sync.Once
	release   func()
	// park, when set, offers the upstream connection to the warm pool
	// at Close and reports whether the pool took it; broken keeps it
	// from being offered (an upstream operation or the UPDATE failed).
	park   func(*upstream.Conn, upstream.Status) bool
	broken bool
}

// open syncs the mailbox record, tries once to finish an UPDATE left
// pending by an earlier session (a crash, a temporary failure), builds
// the session's fixed message list, and records the login in the client
// record. A pending UPDATE never fails the login: if the replay fails, the
// session is served all the same (the messages are still there) and the
// replay is tried again at the next login, within the bound of
// maxReplayAttempts and maxReplayAge.
func (m *maildrop) open(ctx context.Context) error {
	rec, err := m.d.records.sync(ctx, m.conn, m.key.Mailbox, m.status, m.log, m.prov.measureSizes(m.key.Mailbox))
	if err != nil {
		return err
	}
	m.d.records.complete(ctx, m.key.Mailbox, rec, m.log, m.completer())
	cl, err := m.d.loadClient(ctx, m.key)
	if err != nil {
		return fmt.Errorf("loading the client record: %w", err)
	}
	if cl.Pending != nil {
		rec = m.replay(ctx, rec, cl.Pending)
		if cl, err = m.d.loadClient(ctx, m.key); err != nil {
			return fmt.Errorf("loading the client record: %w", err)
		}
		m.pending = cl.Pending
	}
	snap := m.d.records.snapshot(m.key.Mailbox, rec)
	m.rec = rec
	var stale []string
	if len(cl.Hidden) == 0 {
		// The common case: share the mailbox's list with its other sessions.
		m.msgs, m.uids = snap.msgs, snap.uids
	} else {
		stale = m.listVisible(rec, snap, cl.Hidden)
	}
	m.recordLogin(ctx, stale)
	return nil
}

// listVisible builds the message list of a client that hid some messages
// and returns its hidden UIDLs that are gone from the mailbox.
func (m *maildrop) listVisible(rec *state.Mailbox, snap *snapshot, hidden map[string]bool) []string {
	hiddenLeft := len(hidden)
	for i, e := range rec.Entries {
		if hidden[e.UIDL] {
			hiddenLeft--
			continue
		}
		m.msgs = append(m.msgs, snap.msgs[i])
		m.uids = append(m.uids, e.UID)
	}
	if hiddenLeft == 0 {
		return nil
	}
	// UIDLs are never reused, so a hidden UIDL that is gone from the
	// mailbox will never be needed again.
	present := make(map[string]bool, len(rec.Entries))
	for _, e := range rec.Entries {
		present[e.UIDL] = true
	}
	var stale []string
	for u := range hidden {
		if !present[u] {
			stale = append(stale, u)
		}
	}
	return stale
}

// recordLogin stores the time of this login as the client record's last
// login, in one write with the pruning of the stale hidden UIDLs. It is
// the one store write of a login that finds nothing to change. A failure
// does not fail the login: it only leaves the last login (and the stale
// UIDLs, pruned next time) as they were.
func (m *maildrop) recordLogin(ctx context.Context, stale []string) {
	if err := m.d.applyClient(ctx, m.key, state.ClientChange{Unhide: stale, LastLogin: m.d.now()}); err != nil {
		m.log.Warn("recording the login in the client record failed", zap.Int("stale_hidden", len(stale)), zap.Error(err))
	}
}

// replay tries to finish a pending UPDATE: the UIDLs it names are looked up
// in the current record (they survive a UIDVALIDITY change), and the policy
// recorded with it is applied upstream to the messages whose identity is
// certain (state.ReplayTargets; the others are skipped and logged). Done,
// the intent is cleared. Refused for good (KindPerm), or failed once too
// often or too long, it is dropped with a log line: its messages stay, which
// loses nothing. Failed otherwise, it stays for the next login with one more
// attempt counted. It returns the record as it now is and never fails: the
// login goes on whatever happens here.
func (m *maildrop) replay(ctx context.Context, rec *state.Mailbox, p *state.Pending) *state.Mailbox {
	plan := state.ReplayTargets(rec, p)
	m.log.Info("finishing an UPDATE left pending by an earlier session",
		zap.String("policy", p.Policy), zap.Int("messages", len(p.UIDLs)), zap.Int("still_present", len(plan.UIDs)+len(plan.Skipped)),
		zap.Int("attempts", p.Attempts))
	if len(plan.Skipped) > 0 {
		m.log.Warn("a pending UPDATE skips messages whose identity is not certain after a UIDVALIDITY change; they stay",
			zap.String("policy", p.Policy), zap.Strings("uidls", plan.Skipped),
			zap.Uint32("pending_uidvalidity", p.UIDValidity), zap.Uint32("uidvalidity", rec.UIDValidity))
	}
	err := m.applyUpstream(ctx, p, plan.UIDs, plan.UIDLs)
	if err == nil {
		done := *p
		done.UIDLs = plan.UIDLs
		m.d.metrics.replayed("done")
		next, ferr := m.finish(ctx, rec, &done)
		if ferr != nil {
			m.log.Warn("recording the finished UPDATE failed; it is replayed (idempotently) at the next login", zap.Error(ferr))
			return rec
		}
		return next
	}
	attempts := p.Attempts + 1
	age := m.d.now().Sub(p.Created)
	switch {
	case upstream.KindOf(err) == upstream.KindPerm:
		m.drop(ctx, p, attempts, "the upstream refuses it", err)
	case attempts >= maxReplayAttempts || age >= maxReplayAge:
		m.drop(ctx, p, attempts, fmt.Sprintf("it failed %d times over %v (at most %d attempts over %v)", attempts, age.Round(time.Second), maxReplayAttempts, maxReplayAge), err)
	default:
		m.d.metrics.replayed("retried")
		again := *p
		again.Attempts = attempts
		if serr := m.d.applyClient(ctx, m.key, state.ClientChange{SetPending: &again}); serr != nil {
			m.log.Warn("counting a failed replay failed", zap.Error(serr))
		}
		m.log.Warn("a pending UPDATE failed again; its messages stay listed and it is retried at the next login",
			zap.String("policy", p.Policy), zap.Int("messages", len(p.UIDLs)), zap.Int("attempts", attempts),
			zap.Duration("age", age), zap.Stringer("reason", upstream.ReasonOf(err)), zap.Error(err))
	}
	return rec
}

// drop clears a pending UPDATE that will not be tried again. Its messages
// stay upstream as they are.
func (m *maildrop) drop(ctx context.Context, p *state.Pending, attempts int, why string, err error) {
	m.d.metrics.replayed("dropped")
	m.log.Error("dropping a pending UPDATE: "+why+"; its messages were not deleted",
		zap.String("policy", p.Policy), zap.Int("messages", len(p.UIDLs)), zap.Strings("uidls", p.UIDLs),
		zap.Int("attempts", attempts), zap.Time("created", p.Created),
		zap.Stringer("reason", upstream.ReasonOf(err)), zap.Error(err))
	if cerr := m.d.applyClient(ctx, m.key, state.ClientChange{ClearPending: true}); cerr != nil {
		m.log.Warn("clearing the dropped UPDATE failed", zap.Error(cerr))
	}
}

// finish records that p reached the upstream: the intent is cleared, hidden
// UIDLs are added for the flag and hide policies, and for expunge and move
// the messages leave the mailbox record. It returns the record as it now is.
func (m *maildrop) finish(ctx context.Context, rec *state.Mailbox, p *state.Pending) (*state.Mailbox, error) {
	ch := state.ClientChange{ClearPending: true}
	if p.Policy == PolicyFlag || p.Policy == PolicyHide {
		ch.Hide = p.UIDLs
	}
	if err := m.d.applyClient(ctx, m.key, ch); err != nil {
		return nil, fmt.Errorf("clearing the pending UPDATE: %w", err)
	}
	if p.Policy == PolicyFlag || p.Policy == PolicyHide {
		return rec, nil
	}
	gone := make(map[string]bool, len(p.UIDLs))
	for _, u := range p.UIDLs {
		gone[u] = true
	}
	// The next sync would find them gone too; removing them now keeps
	// every client's view exact meanwhile.
	next, err := m.d.records.update(ctx, m.key.Mailbox, func(cur *state.Mailbox) (state.MailboxChange, error) {
		ch := state.MailboxChange{Markers: cur.Markers}
		for _, e := range cur.Entries {
			if gone[e.UIDL] {
				ch.Delete = append(ch.Delete, e.UID)
			}
		}
		if len(ch.Delete) == 0 {
			return ch, errUnchanged
		}
		return ch, nil
	})
	if err != nil {
		m.log.Warn("removing deleted messages from the mailbox record failed; the next sync will", zap.Error(err))
		return rec, nil
	}
	return next, nil
}

// List implements pop3.Maildrop.
func (m *maildrop) List() []pop3.Message { return m.msgs }

// Retr implements pop3.Maildrop: it streams BODY.PEEK[] to the POP3
// writer, which repairs line ends and counts the octets the client
// receives, so that a size the upstream got wrong is corrected
// (invariant 4).
func (m *maildrop) Retr(ctx context.Context, n int, cw pop3.MessageWriter) error {
	uid, msg := m.uids[n-1], m.msgs[n-1]
	handled, err := m.retrAhead(ctx, n, cw)
	if !handled {
		err = m.withConn(ctx, func(c *upstream.Conn) error {
			if cw.MessageOctets() > 0 {
				return errMidway
			}
			_, err := c.WriteMessage(ctx, uid, cw)
			if err != nil && cw.MessageOctets() > 0 {
				// A reconnect could not continue the message: do not
				// make the client wait for one.
				return fmt.Errorf("%w: %w", errMidway, err)
			}
			return err
		})
	}
	m.lastRetr = n
	if err != nil {
		if cw.MessageOctets() == 0 {
			return toPOP3(err)
		}
		return err
	}
	if size := cw.MessageOctets(); size != msg.Size {
		m.measured[msg.UIDL] = size
		if m.prov.sizeMismatch(m.key.Mailbox) {
			m.log.Warn("the upstream's RFC822.SIZE is not the octets RETR sends; from now on new messages are measured at their first sync",
				zap.String("uidl", msg.UIDL), zap.Int64("listed", msg.Size), zap.Int64("sent", size))
		}
	}
	if m.d.markSeen {
		if err := m.conn.AddFlags(ctx, []uint32{uid}, []string{`\Seen`}); err != nil {
			m.log.Warn("setting \\Seen after RETR failed", zap.Uint32("uid", uid), zap.Error(err))
		}
	}
	return nil
}

// errMidway stops a retry once part of a message has been written.
var errMidway = errors.New("upstream failed in the middle of a message")

// Top implements pop3.Maildrop.
func (m *maildrop) Top(ctx context.Context, n, lines int, cw pop3.MessageWriter) error {
	uid := m.uids[n-1]
	err := m.withConn(ctx, func(c *upstream.Conn) error {
		if cw.MessageOctets() > 0 {
			return errMidway
		}
		err := c.WriteTop(ctx, uid, lines, cw)
		if err != nil && cw.MessageOctets() > 0 {
			return fmt.Errorf("%w: %w", errMidway, err)
		}
		return err
	})
	if err != nil && cw.MessageOctets() == 0 {
		return toPOP3(err)
	}
	return err
}

// Commit implements pop3.Maildrop: the UPDATE state of RFC 1939 §6 with the
// configured delete policy. The intent is stored first (invariant 8).
//
// QUIT ends the session whatever Commit returns, so Commit also releases the
// maildrop lock before the client sees the answer: a client that logs in
// again right after QUIT must not find its maildrop still in use.
func (m *maildrop) Commit(ctx context.Context, deleted []int) (err error) {
	defer m.Close()
	defer func() { m.broken = m.broken || err != nil }()
	m.saveMeasured(ctx)
	if len(deleted) == 0 {
		return nil
	}
	cfg := m.d.delete
	defer func() { m.d.metrics.deleted(cfg.Policy, deleteResult(err), len(deleted)) }()
	p := &state.Pending{Policy: string(cfg.Policy), UIDValidity: m.status.UIDValidity, Created: m.d.now()}
	for _, n := range deleted {
		p.UIDs = append(p.UIDs, m.uids[n-1])
		p.UIDLs = append(p.UIDLs, m.msgs[n-1].UIDL)
	}
	if err := policyNeeds(m.conn, cfg.Policy); err != nil {
		return &pop3.Error{Code: pop3.CodeSysPerm, Text: err.Error() + "; nothing was deleted"}
	}
	switch cfg.Policy {
	case PolicyFlag:
		p.Flags = slices.Clone(m.flagsToSet())
	case PolicyMove:
		target, err := m.moveTarget(ctx)
		if err != nil {
			return err
		}
		p.Target = target
	}
	m.merge(p)
	m.identify(p)
	if err := m.d.applyClient(ctx, m.key, state.ClientChange{SetPending: p}); err != nil {
		if pe := storeTrouble(m.log, err); pe != nil {
			return &pop3.Error{Code: pe.Code, Text: pe.Text + "; nothing was deleted", Err: err}
		}
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "state store unavailable; nothing was deleted", Err: err}
	}
	if err := m.applyUpstream(ctx, p, p.UIDs, p.UIDLs); err != nil {
		return m.failed(ctx, p, err)
	}
	if _, err := m.finish(ctx, &state.Mailbox{}, p); err != nil {
		// The upstream has done it; the intent is replayed (idempotently)
		// at the next login.
		m.log.Warn("recording the finished UPDATE failed", zap.Error(err))
	}
	return nil
}

// deleteResult names the outcome of Commit's answer for the metrics: ok,
// refused ([SYS/PERM]: the upstream or the configuration refused it, nothing
// was deleted) or failed (anything else: retried at the next login).
func deleteResult(err error) string {
	if err == nil {
		return "ok"
	}
	var pe *pop3.Error
	if errors.As(err, &pe) && pe.Code == pop3.CodeSysPerm {
		return "refused"
	}
	return "failed"
}

// failed handles an UPDATE the upstream did not confirm at QUIT and
// returns what the client is told (RFC 3206). Refused for good (KindPerm:
// a right is missing, the target is over quota, a mailbox is missing), the
// intent is cleared, as nothing will make it succeed by itself; the answer
// is [SYS/PERM] with the cause. Otherwise (the server is down or busy, the
// connection broke, the answer was lost) it stays pending with one attempt
// counted, for the next login; the answer is [SYS/TEMP].
func (m *maildrop) failed(ctx context.Context, p *state.Pending, err error) error {
	reason := upstream.ReasonOf(err)
	if upstream.KindOf(err) == upstream.KindPerm {
		if cerr := m.d.applyClient(ctx, m.key, state.ClientChange{ClearPending: true}); cerr != nil {
			m.log.Warn("clearing a refused UPDATE failed", zap.Error(cerr))
		}
		m.log.Error("the upstream refused the UPDATE; nothing was deleted",
			zap.String("policy", p.Policy), zap.Int("messages", len(p.UIDs)), zap.Stringer("reason", reason), zap.Error(err))
		text := "the upstream server refused the deletion; nothing was deleted"
		switch reason {
		case upstream.ReasonPermission:
			text = "the upstream server refused the deletion: permission denied; nothing was deleted"
		case upstream.ReasonQuota:
			text = "the upstream server refused the deletion: over quota; nothing was deleted"
		}
		return &pop3.Error{Code: pop3.CodeSysPerm, Text: text, Err: err}
	}
	again := *p
	again.Attempts++
	if serr := m.d.applyClient(ctx, m.key, state.ClientChange{SetPending: &again}); serr != nil {
		m.log.Warn("counting the failed attempt failed", zap.Error(serr))
	}
	m.log.Warn("UPDATE failed upstream; it stays recorded and is retried at the next login",
		zap.String("policy", p.Policy), zap.Int("messages", len(p.UIDs)), zap.Stringer("reason", reason), zap.Error(err))
	return &pop3.Error{Code: pop3.CodeSysTemp, Text: "the upstream server did not confirm the deletion; it is retried at the next login", Err: err}
}

// merge adds to p, decided at this QUIT, the messages of an UPDATE still
// pending from an earlier session (its replay at login failed), when both
// have the same policy: one intent covers both, and the client need not DELE
// those messages again. The merged intent counts its attempts and its age
// afresh. An UPDATE pending with another policy (the configuration changed)
// is replaced, with a log line; its messages stay.
func (m *maildrop) merge(p *state.Pending) {
	old := m.pending
	if old == nil {
		return
	}
	if old.Policy != p.Policy || old.Target != p.Target || !slices.Equal(old.Flags, p.Flags) {
		m.log.Warn("a new UPDATE replaces one still pending with another policy; the messages of the old one were not deleted",
			zap.String("old_policy", old.Policy), zap.String("policy", p.Policy), zap.Strings("uidls", old.UIDLs))
		return
	}
	have := make(map[string]bool, len(p.UIDLs))
	for _, u := range p.UIDLs {
		have[u] = true
	}
	plan := state.ReplayTargets(m.rec, old)
	for i, uid := range plan.UIDs {
		if !have[plan.UIDLs[i]] {
			p.UIDs = append(p.UIDs, uid)
			p.UIDLs = append(p.UIDLs, plan.UIDLs[i])
		}
	}
	idx := make([]int, len(p.UIDs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(p.UIDs[a], p.UIDs[b]) })
	uids, uidls := make([]uint32, len(idx)), make([]string, len(idx))
	for i, j := range idx {
		uids[i], uidls[i] = p.UIDs[j], p.UIDLs[j]
	}
	p.UIDs, p.UIDLs = uids, uidls
}

// identify records in p the fingerprint and digest of each of its
// messages, from the record the session was opened with, so that a replay
// after a UIDVALIDITY change acts only on those very messages.
func (m *maildrop) identify(p *state.Pending) {
	at := make(map[string]int, len(p.UIDLs))
	for i, u := range p.UIDLs {
		at[u] = i
	}
	p.Fingerprints = make([]string, len(p.UIDLs))
	p.Digests = make([]string, len(p.UIDLs))
	if m.rec == nil {
		return
	}
	for _, e := range m.rec.Entries {
		if i, ok := at[e.UIDL]; ok {
			p.Fingerprints[i], p.Digests[i] = e.Fingerprint, e.Digest
		}
	}
}

// moveTarget returns the mailbox the move policy moves to (findTrash):
// delete.move_to, the \Trash special-use mailbox, a mailbox with a usual
// Trash name, or "Trash", which it creates then (with \Trash where the
// server has CREATE-SPECIAL-USE). It runs at QUIT, after DELE: creating
// the Trash touches no message. The choice is logged once per account.
func (m *maildrop) moveTarget(ctx context.Context) (string, error) {
	if m.target != "" {
		return m.target, nil
	}
	var tc trashChoice
	err := m.withConn(ctx, func(c *upstream.Conn) (err error) {
		if tc, err = findTrash(ctx, c, m.d.delete.MoveTo, m.prov.current()); err != nil || !tc.Create {
			return err
		}
		return c.Create(ctx, tc.Name, `\Trash`)
	})
	if err != nil {
		m.log.Error("the move policy could not find or create a Trash mailbox upstream; set delete.move_to", zap.String("trash", tc.Name), zap.Error(err))
		return "", toPOP3(err)
	}
	if m.prov.first("trash " + m.acct) {
		how := tc.How
		if tc.Create {
			how = "created"
		}
		m.log.Info("the move policy moves deleted messages to this Trash", zap.String("trash", tc.Name), zap.String("how", how))
	}
	m.target = tc.Name
	return tc.Name, nil
}

// flagsToSet returns what the flag policy sets in this mailbox: the
// configured flags its PERMANENTFLAGS allow, or \Seen in their place
// (permittedFlags). A refusal is logged once per account; the messages
// are hidden from the device all the same.
func (m *maildrop) flagsToSet() []string {
	fc := permittedFlags(m.d.delete.Flags, m.status.PermanentFlags)
	if len(fc.Refused) > 0 && m.prov.first("flags "+m.acct) {
		m.log.Warn("the upstream's PERMANENTFLAGS do not allow some of delete.flags; the flag policy sets what it can and the device no longer lists the messages all the same",
			zap.Strings("refused", fc.Refused), zap.Strings("set", fc.Flags), zap.Strings("permanentflags", m.status.PermanentFlags))
	}
	return fc.Flags
}

// applyUpstream carries out p's policy on uids (uidls[i] is the UIDL of
// uids[i]) with UID commands only (invariant 2). It is idempotent, so a
// replay after a crash is safe. It runs under the update lock of the
// mailbox, so that the UPDATEs of its devices, on every instance, reach the
// upstream one after the other (invariant 13).
func (m *maildrop) applyUpstream(ctx context.Context, p *state.Pending, uids []uint32, uidls []string) error {
	if len(uids) == 0 || p.Policy == PolicyHide {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, updateLockWait*m.d.timeout)
	done := m.d.metrics.timeStore("lock_update")
	release, err := m.d.store.LockUpdate(lctx, m.key.Mailbox)
	done()
	cancel()
	if err != nil {
		return fmt.Errorf("waiting for the other UPDATEs of this mailbox: %w", err)
	}
	defer release()
	return m.withConn(ctx, func(c *upstream.Conn) error {
		switch p.Policy {
		case PolicyFlag:
			return c.AddFlags(ctx, uids, p.Flags)
		case PolicyExpunge:
			return c.Expunge(ctx, uids)
		case PolicyMove:
			return m.move(ctx, c, p, uids, uidls)
		}
		return &upstream.Error{Kind: upstream.KindPerm, Op: "update", Err: fmt.Errorf("unknown policy %q", p.Policy)}
	})
}

// updateLockWait is how long, in upstream timeouts, an UPDATE waits for the
// UPDATEs of other devices of its mailbox before it gives up (the intent
// stays stored and is finished at the next login).
const updateLockWait = 2

// move moves uids to p.Target, under the update lock. It first asks which
// of them are still in the mailbox (another device may have moved them
// since this session's login) and moves only those, so that a message is
// not copied twice. Without MOVE, the COPY fallback records in the stored
// intent which messages each COPY copied (p.Copied, by UIDL) before it
// flags and expunges them, and a retry, in this session or a replay,
// copies only the others.
func (m *maildrop) move(ctx context.Context, c *upstream.Conn, p *state.Pending, uids []uint32, uidls []string) error {
	present, err := c.SearchUIDs(ctx, uids)
	if err != nil || len(present) == 0 {
		return err
	}
	uidlOf := make(map[uint32]string, len(uids))
	for i, u := range uids {
		uidlOf[u] = uidls[i]
	}
	copied := make(map[string]bool, len(p.Copied))
	for _, u := range p.Copied {
		copied[u] = true
	}
	opts := &upstream.MoveOptions{OnCopy: func(src []uint32) { m.recordCopied(ctx, p, src, uidlOf, copied) }}
	for _, u := range present {
		if copied[uidlOf[u]] {
			opts.Copied = append(opts.Copied, u)
		}
	}
	return c.MoveWith(ctx, present, p.Target, opts)
}

// recordCopied adds the UIDLs of the copied UIDs to p.Copied (and copied)
// and stores p.
// If the store fails, the move goes on: the expunge that follows is what
// makes the copy final, and only a retry after a failure of both would copy
// again.
func (m *maildrop) recordCopied(ctx context.Context, p *state.Pending, src []uint32, uidlOf map[uint32]string, copied map[string]bool) {
	for _, u := range src {
		if uidl, ok := uidlOf[u]; ok && !copied[uidl] {
			copied[uidl] = true
			p.Copied = append(p.Copied, uidl)
		}
	}
	if err := m.d.applyClient(ctx, m.key, state.ClientChange{SetPending: p}); err != nil {
		m.log.Warn("recording what the COPY copied failed; a retry may copy it again", zap.Error(err))
	}
}

// withConn runs op on the upstream connection. When op fails with a
// temporary error (the upstream restarted, a connection dropped), it
// reconnects once and runs op again, provided the mailbox still has the
// same UIDVALIDITY, so the UIDs of this session still mean the same
// messages. op must be safe to run twice.
func (m *maildrop) withConn(ctx context.Context, op func(*upstream.Conn) error) error {
	m.dropAhead()
	err := op(m.conn)
	if err != nil {
		m.broken = true
	}
	if err == nil || errors.Is(err, errMidway) || upstream.KindOf(err) != upstream.KindTemp || ctx.Err() != nil {
		return err
	}
	if m.prov.outcome(m.log, m.acct, err, false) {
		// Throttled: a reconnect now would only make it worse.
		return err
	}
	m.log.Info("upstream operation failed; reconnecting once", zap.Error(err))
	conn, st, rerr := m.reopen(ctx, m.account)
	if rerr != nil {
		return err
	}
	if st.UIDValidity != m.status.UIDValidity {
		conn.Close()
		return &upstream.Error{Kind: upstream.KindTemp, Op: "reconnect", Err: errors.New("UIDVALIDITY changed during the session")}
	}
	m.conn.Close()
	m.conn = conn
	return op(conn)
}

// saveMeasured stores the sizes RETR measured where the upstream's
// RFC822.SIZE was not what RETR sends, so later LISTs are exact.
func (m *maildrop) saveMeasured(ctx context.Context) {
	if len(m.measured) == 0 {
		return
	}
	_, err := m.d.records.update(ctx, m.key.Mailbox, func(cur *state.Mailbox) (state.MailboxChange, error) {
		ch := state.MailboxChange{Markers: cur.Markers}
		for _, e := range cur.Entries {
			if size, ok := m.measured[e.UIDL]; ok && size != e.Size {
				e.Size = size
				ch.Put = append(ch.Put, e)
			}
		}
		if len(ch.Put) == 0 {
			return ch, errUnchanged
		}
		return ch, nil
	})
	if err != nil {
		m.log.Warn("storing measured sizes failed", zap.Error(err))
	}
	clear(m.measured)
}

// Close implements pop3.Maildrop: it stores measured sizes, logs out
// upstream and releases the lock. It never deletes anything.
func (m *maildrop) Close() error {
	m.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), m.d.timeout)
		defer cancel()
		m.saveMeasured(ctx)
		// The read-ahead first: a LOGOUT sent while its FETCH is pending
		// makes imapclient close the command under its reader (a data
		// race). After a dropped connection its context has ended, so it
		// stops at once.
		m.dropAhead()
		if m.conn != nil && (m.park == nil || m.broken || !m.park(m.conn, m.status)) {
			m.conn.Close()
		}
		m.release()
	})
	return nil
}
