package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/popbridge/popbridge/state"
)

// maxConflicts bounds the retries when another session updated the mailbox
// record between our load and our write. Each retry waits a little longer,
// at random, so that sessions that collided do not collide again in step.
const maxConflicts = 16

// records owns the mailbox records: every read and every write of one goes
// through it. It loads a record from the in-memory cache when the store
// says its version has not moved, updates one with the conflict retry that
// every writer needs (login's sync, QUIT's removals, replays, measured
// sizes), and keeps the cache to what was stored, so that the sessions of
// one mailbox share one message list.
type records struct {
	store state.Store
	cache *recordCache
	uidl  *state.UIDLFormatter
	m     *metrics // nil: nothing counted

	// coldAt is how many messages a sync must list, at least, to list
	// them the cheap way (UID and RFC822.SIZE) and leave their
	// fingerprints to the background completion (complete.go).
	coldAt int
	// batch is how many UIDs one UID FETCH of the completion asks for.
	batch int
	bg    *completions
}

func newRecords(st state.Store, uidl *state.UIDLFormatter) *records {
	return &records{store: st, cache: newRecordCache(), uidl: uidl, coldAt: coldListingAt, batch: completeBatch, bg: newCompletions()}
}

// load returns the stored record of mbox, from the cache when the store
// says its version has not moved.
func (r *records) load(ctx context.Context, mbox string) (*state.Mailbox, error) {
	if vs, ok := r.store.(state.Versioner); ok {
		if cv := r.cache.version(mbox); cv != 0 {
			done := r.m.timeStore("mailbox_version")
			v, err := vs.MailboxVersion(ctx, mbox)
			done()
			if err != nil {
				return nil, err
			}
			if s := r.cache.get(mbox, v); s != nil {
				return s.rec, nil
			}
		}
	}
	done := r.m.timeStore("load_mailbox")
	m, err := r.store.LoadMailbox(ctx, mbox)
	done()
	if err != nil {
		return nil, err
	}
	r.cache.put(mbox, m)
	return m, nil
}

// errUnchanged, returned by an update's change function, stores nothing:
// update returns the record as it is.
var errUnchanged = errors.New("nothing to change")

// update stores the change that change computes from the current record of
// mbox, and returns the record as stored. When another session stored a
// change in between (state.ErrConflict), it loads the record again and asks
// change again, at most maxConflicts times. change may return errUnchanged.
func (r *records) update(ctx context.Context, mbox string, change func(cur *state.Mailbox) (state.MailboxChange, error)) (*state.Mailbox, error) {
	for attempt := 0; ; attempt++ {
		cur, err := r.load(ctx, mbox)
		if err != nil {
			return nil, fmt.Errorf("loading the mailbox record: %w", err)
		}
		ch, err := change(cur)
		if errors.Is(err, errUnchanged) {
			return cur, nil
		}
		if err != nil {
			return nil, err
		}
		done := r.m.timeStore("apply_mailbox")
		v, err := r.store.ApplyMailbox(ctx, mbox, cur.Version, ch)
		done()
		if errors.Is(err, state.ErrConflict) && attempt < maxConflicts {
			conflictPause(ctx, attempt)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("storing the mailbox record: %w", err)
		}
		next := state.Apply(cur, v, ch)
		r.cache.put(mbox, next)
		return next, nil
	}
}

// snapshot returns the shared, read-only message list of rec, a record of
// mbox that load or update returned.
func (r *records) snapshot(mbox string, rec *state.Mailbox) *snapshot {
	return r.cache.put(mbox, rec)
}

// conflictPause waits before the retry after the attempt-th conflict: up to
// 1 ms, doubling with each attempt, at most 50 ms; at random within that.
func conflictPause(ctx context.Context, attempt int) {
	limit := min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond)
	t := time.NewTimer(rand.N(limit) + 1)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
