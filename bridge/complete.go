package bridge

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// The background completion of fingerprints.
//
// A sync that must list many messages (a large mailbox seen for the first
// time, or a large batch of new mail) lists only UID and RFC822.SIZE, the
// cheapest listing there is, and answers the login with that (see
// "Sync at login" in docs/architecture.md). Every message gets its UIDL
// from UIDVALIDITY and UID, as always, so nothing served can change later.
// What is left out is the fingerprint of each message (INTERNALDATE and
// Message-ID), which only serves to re-match the messages after a
// UIDVALIDITY change, and, where fingerprints tie, the content digest.
// A completion adds them: one goroutine per mailbox, on an upstream
// connection of its own, in batches of records.batch UIDs, each batch
// stored at once through records.update. When the account's connection
// budget has no place free, each login completes one batch on its own
// connection instead. Until a message has its fingerprint, a UIDVALIDITY
// change gives it a new UIDL (the client downloads it once more), never
// another message's.

const (
	// coldListingAt is records.coldAt: from this many messages on, a
	// sync lists them the cheap way. Below, it fetches their fingerprints
	// at once, as that costs little.
	coldListingAt = 1000
	// completeBatch is records.batch: UIDs per UID FETCH of a completion,
	// each batch one store update.
	completeBatch = 2000
	// digestBatch bounds the messages (whole bodies) of one digest FETCH.
	digestBatch = 100
	// completionDelay is how long a completion waits, once its
	// connection is open, before its first FETCH, so that the session
	// that started it answers its first commands (STAT, UIDL of the whole
	// mailbox) without competing with it for the CPU and the upstream.
	completionDelay = time.Second
)

// completions runs the background completions of one process: at most one
// per mailbox, stopped by Server.Shutdown.
type completions struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	running map[string]bool // mailbox keys
	stopped bool
	delay   time.Duration // completionDelay; tests set 0
	// hold, when set (tests), runs first in each completion's goroutine,
	// before it opens its connection.
	hold func()
}

func newCompletions() *completions {
	ctx, cancel := context.WithCancel(context.Background())
	return &completions{ctx: ctx, cancel: cancel, running: map[string]bool{}, delay: completionDelay}
}

// stop ends the running completions (their upstream commands fail at
// once) and waits for them until ctx ends. No completion starts after it.
func (c *completions) stop(ctx context.Context) {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.cancel()
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// wait waits for the running completions to end (tests).
func (c *completions) wait() { c.wg.Wait() }

// completer is how a completion started by a session gets to the
// upstream (maildrop.completer).
type completer struct {
	// admit takes a place in the account's connection budget if one is
	// free now, without waiting; free gives it back.
	admit func() (free func(), err error)
	// open logs in with the session's credentials and selects the
	// mailbox.
	open func(ctx context.Context) (*upstream.Conn, upstream.Status, error)
	// conn is the session's own connection, for a slice when no place is
	// free.
	conn *upstream.Conn
}

// completer is the session's way to the upstream for a completion.
func (m *maildrop) completer() completer {
	prov, acct, account, reopen, log := m.prov, m.acct, m.account, m.reopen, m.log
	return completer{
		admit: func() (func(), error) {
			now, cancel := context.WithCancel(context.Background())
			cancel() // admit takes a free place or refuses; it does not wait
			return prov.admit(now, zap.NewNop(), acct)
		},
		open: func(ctx context.Context) (*upstream.Conn, upstream.Status, error) {
			conn, st, err := reopen(ctx, account)
			prov.outcome(log, acct, err, true)
			return conn, st, err
		},
		conn: m.conn,
	}
}

// complete goes on with the completion of rec, the record of mbox a sync
// of the session's connection just returned, when some of its entries
// have no fingerprint yet and no completion of mbox runs in this process.
// With a place free in the account's connection budget, it starts the
// background completion on a connection of its own and returns at once.
// Without one (upstream.max_connections_per_account reached), it completes
// one slice (records.batch UIDs, or the digests of up to digestBatch tied
// messages) on the session's connection before the login answers, so that
// the completion advances at every login all the same; a failure there
// is logged and does not fail the login.
// Another instance sharing a PostgreSQL store may complete the same
// mailbox at the same time: each batch is merged into the record as it is
// then (records.update), and a fingerprint is only ever added where none is.
func (r *records) complete(ctx context.Context, mbox string, rec *state.Mailbox, log *zap.Logger, via completer) {
	if !unfingerprinted(rec) {
		return
	}
	c := r.bg
	c.mu.Lock()
	if c.stopped || c.running[mbox] {
		c.mu.Unlock()
		return
	}
	free, err := via.admit()
	if err != nil {
		c.mu.Unlock()
		fps, digests, err := r.completeSlices(ctx, via.conn, mbox, rec.UIDValidity, 1)
		r.m.completed("", fps)
		if err != nil {
			log.Info("fingerprint completion: a slice on the session's connection failed; the next login goes on with it",
				zap.String("mailbox", mbox), zap.Int("fingerprints", fps), zap.Int("digests", digests), zap.Error(err))
		} else {
			log.Debug("fingerprint completion: one slice on the session's connection (no upstream connection free in the account's budget)",
				zap.String("mailbox", mbox), zap.Int("fingerprints", fps), zap.Int("digests", digests))
		}
		return
	}
	c.running[mbox] = true
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.running, mbox)
			c.mu.Unlock()
		}()
		defer free()
		if c.hold != nil {
			c.hold()
		}
		r.runCompletion(c.ctx, mbox, log.With(zap.String("mailbox", mbox)), via.open, c.delay)
	}()
}

// unfingerprinted reports whether an entry of m has no fingerprint. It
// runs at every login, so it allocates nothing.
func unfingerprinted(m *state.Mailbox) bool {
	for i := range m.Entries {
		if m.Entries[i].Fingerprint == "" {
			return true
		}
	}
	return false
}

// errStale stops a completion whose record moved to another UIDVALIDITY.
var errStale = errors.New("the mailbox has another UIDVALIDITY now")

// runCompletion completes the record of mbox on a connection of its own:
// the fingerprints of the entries without one, in batches, and then the
// digests of the entries whose fingerprints tie. It opens the connection
// at once, while the session that started it still holds its credentials
// (an enrolled account's key is forgotten when its session ends), and
// sends its first FETCH after delay. It logs once, at the end.
func (r *records) runCompletion(ctx context.Context, mbox string, log *zap.Logger, open func(context.Context) (*upstream.Conn, upstream.Status, error), delay time.Duration) {
	start := time.Now()
	var fps, digests int
	err := func() error {
		conn, st, err := open(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		fps, digests, err = r.completeSlices(ctx, conn, mbox, st.UIDValidity, 0)
		return err
	}()
	fields := []zap.Field{zap.Int("fingerprints", fps), zap.Int("digests", digests), zap.Duration("took", time.Since(start).Round(time.Millisecond))}
	switch {
	case err == nil:
		r.m.completed("done", fps)
		log.Info("fingerprints completed in the background", fields...)
	case errors.Is(err, errStale):
		r.m.completed("uidvalidity", fps)
		log.Info("fingerprint completion stopped: the upstream UIDVALIDITY changed", fields...)
	default:
		r.m.completed("stopped", fps)
		log.Info("fingerprint completion stopped; a later login goes on with it", append(fields, zap.Error(err))...)
	}
}

// completeSlices completes the record of mbox over conn, whose selected
// mailbox has UIDVALIDITY uv: the fingerprints of the entries without one,
// records.batch UIDs per UID FETCH, and once none is missing, the digests
// of the entries whose fingerprints tie, digestBatch at a time. Each slice
// is stored at once. With limit > 0 it stops after that many slices of
// fingerprints, or, once they are complete, of digests. It returns the
// fingerprints and digests it stored.
func (r *records) completeSlices(ctx context.Context, conn *upstream.Conn, mbox string, uv uint32, limit int) (fps, digests int, err error) {
	slices := 0
	more := func() bool { return limit <= 0 || slices < limit }
	cur, err := r.load(ctx, mbox)
	if err != nil {
		return 0, 0, err
	}
	if cur.UIDValidity != uv {
		return 0, 0, errStale
	}
	missing := state.Unfingerprinted(cur)
	for len(missing) > 0 {
		if !more() {
			return fps, digests, nil
		}
		slices++
		batch := missing[:min(r.batch, len(missing))]
		missing = missing[len(batch):]
		got := make(map[uint32]string, len(batch))
		err := conn.FetchInfo(ctx, batch, func(msg upstream.Msg) error {
			got[msg.UID] = listed(msg, true).Fingerprint
			return nil
		})
		if err != nil {
			return fps, digests, err
		}
		n, err := r.fill(ctx, mbox, func(cur *state.Mailbox) (state.MailboxChange, bool) {
			return state.AddFingerprints(cur, uv, got)
		}, uv)
		fps += n
		if err != nil {
			return fps, digests, err
		}
	}
	// The fingerprints are complete: the entries that share one must be
	// told apart by digest (state.Rematch).
	if cur, err = r.load(ctx, mbox); err != nil {
		return fps, digests, err
	}
	if cur.UIDValidity != uv {
		return fps, digests, errStale
	}
	ties := state.DigestsMissing(cur)
	slices = 0
	for len(ties) > 0 && more() {
		slices++
		batch := ties[:min(digestBatch, len(ties))]
		ties = ties[len(batch):]
		got, err := r.digests(ctx, conn, batch)
		if err != nil {
			return fps, digests, err
		}
		n, err := r.fill(ctx, mbox, func(cur *state.Mailbox) (state.MailboxChange, bool) {
			return state.AddDigests(cur, uv, got)
		}, uv)
		digests += n
		if err != nil {
			return fps, digests, err
		}
	}
	return fps, digests, nil
}

// fill stores the change add computes from the current record of mbox and
// returns how many entries it changed. A record that moved to another
// UIDVALIDITY than uv is errStale.
func (r *records) fill(ctx context.Context, mbox string, add func(cur *state.Mailbox) (state.MailboxChange, bool), uv uint32) (int, error) {
	n := 0
	_, err := r.update(ctx, mbox, func(cur *state.Mailbox) (state.MailboxChange, error) {
		if cur.UIDValidity != uv {
			return state.MailboxChange{}, errStale
		}
		ch, ok := add(cur)
		if !ok {
			n = 0
			return ch, errUnchanged
		}
		n = len(ch.Put)
		return ch, nil
	})
	return n, err
}
