package pgstore

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/popbridge/popbridge/state"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// DefaultMaxLocks is the number of maildrop locks a Store holds at once when
// Options do not say otherwise.
const DefaultMaxLocks = 100

// DefaultMaxGrantLocks is the number of grant locks a Store holds or waits
// for at once when Options do not say otherwise.
const DefaultMaxGrantLocks = 10

// Options tune Open. A nil *Options is equivalent to a zero Options value.
type Options struct {
	// MaxLocks bounds the maildrop locks held at once through the Store,
	// each of which keeps a connection of its own; zero or less means
	// DefaultMaxLocks. Lock fails at once beyond it. An update lock
	// (LockUpdate), which a session takes while it holds its maildrop lock,
	// keeps one more connection while it is held, so the lock pool has
	// 2×MaxLocks connections at most. PostgreSQL's max_connections must
	// leave room for 2×MaxLocks plus the data pool (pool_max_conns in the
	// DSN) of every instance.
	MaxLocks int
	// MaxGrantLocks bounds the grant locks (state.AccountStore) held or
	// waited for at once through the Store, each on a connection of its
	// own; zero or less means DefaultMaxGrantLocks. LockGrant waits for a
	// connection beyond it. max_connections must leave room for these
	// too.
	MaxGrantLocks int
}

// Store is a state.Store kept in PostgreSQL. Its methods are safe for
// concurrent use. The Hidden map of a Client it loads is never nil.
type Store struct {
	pool      *pgxpool.Pool // records
	lockPool  *pgxpool.Pool // one connection per held maildrop lock
	grantPool *pgxpool.Pool // one connection per grant lock held or waited for
	maxLocks  int

	closing context.Context // done once Close has begun
	close   context.CancelFunc

	mu         sync.Mutex
	slots      int // locks held or being taken, at most maxLocks
	held       map[*heldLock]struct{}
	grantsHeld map[*heldGrant]struct{}
	closed     bool
}

var _ state.Store = (*Store)(nil)

// heldLock is a maildrop lock or an update lock and the connection that
// holds it.
type heldLock struct {
	conn *pgxpool.Conn
	key  string
	slot bool // a maildrop lock, counted in Store.slots
}

// Open connects to the database named by dsn (a libpq keyword/value string
// or URL; pgxpool's pool_ settings apply to the pool for records), and
// creates or migrates the tables.
func Open(ctx context.Context, dsn string, opts *Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	maxLocks := DefaultMaxLocks
	if opts != nil && opts.MaxLocks > 0 {
		maxLocks = opts.MaxLocks
	}
	lockCfg := cfg.Copy()
	lockCfg.MinConns = 0
	lockCfg.MaxConns = int32(min(maxLocks, math.MaxInt32))
	maxGrants := DefaultMaxGrantLocks
	if opts != nil && opts.MaxGrantLocks > 0 {
		maxGrants = opts.MaxGrantLocks
	}
	grantCfg := cfg.Copy()
	grantCfg.MinConns = 0
	grantCfg.MaxConns = int32(min(maxGrants, math.MaxInt32))
	// A cancelled wait for a grant lock is cancelled on the server too, at
	// once, rather than by breaking the connection.
	grantCfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 5 * time.Second}
	}

	s := &Store{maxLocks: maxLocks, held: make(map[*heldLock]struct{}), grantsHeld: make(map[*heldGrant]struct{})}
	s.closing, s.close = context.WithCancel(context.Background())
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if s.lockPool, err = pgxpool.NewWithConfig(ctx, lockCfg); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if s.grantPool, err = pgxpool.NewWithConfig(ctx, grantCfg); err != nil {
		s.lockPool.Close()
		s.pool.Close()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if err := migrate(ctx, s.pool); err != nil {
		s.Close()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return s, nil
}

// migrate applies the embedded migrations the database lacks.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	files, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return err
	}
	slices.Sort(files)
	for i, f := range files {
		// Files are numbered 001_, 002_, … without gaps.
		n, _, _ := strings.Cut(strings.TrimPrefix(f, "migrations/"), "_")
		if num, err := strconv.Atoi(n); err != nil || num != i+1 {
			return fmt.Errorf("migration %s out of sequence", f)
		}
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// One Open at a time migrates; the others wait, then find
		// nothing to do.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('popbridge schema', 0))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS popbridge_schema (version integer NOT NULL)`); err != nil {
			return err
		}
		var version int
		err := tx.QueryRow(ctx, `SELECT version FROM popbridge_schema`).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			_, err = tx.Exec(ctx, `INSERT INTO popbridge_schema (version) VALUES (0)`)
		}
		if err != nil {
			return err
		}
		if version > len(files) {
			return fmt.Errorf("database schema version %d is newer than this popbridge's (%d)", version, len(files))
		}
		for _, f := range files[version:] {
			sql, err := migrationFS.ReadFile(f)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return fmt.Errorf("migration %s: %w", f, err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE popbridge_schema SET version = $1`, len(files))
		return err
	})
}

// LoadMailbox returns the record of mailbox, or a zero Mailbox when there is
// none.
func (s *Store) LoadMailbox(ctx context.Context, mailbox string) (*state.Mailbox, error) {
	m := &state.Mailbox{}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var version, validity, next, num, modseq int64
		err := tx.QueryRow(ctx, `SELECT version, uid_validity, uid_next, num_messages, highest_modseq FROM popbridge_mailbox WHERE name = $1`, mailbox).
			Scan(&version, &validity, &next, &num, &modseq)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var bad []string
		m.Version = uint64(version)
		m.UIDValidity = u32(validity, "uid_validity", &bad)
		m.UIDNext = u32(next, "uid_next", &bad)
		m.NumMessages = u32(num, "num_messages", &bad)
		m.HighestModSeq = uint64(modseq)
		if bad != nil {
			return fmt.Errorf("%s out of range", strings.Join(bad, ", "))
		}

		rows, err := tx.Query(ctx, `SELECT uid, uidl, size, fingerprint, digest FROM popbridge_entry WHERE mailbox = $1 ORDER BY uid`, mailbox)
		if err != nil {
			return err
		}
		defer rows.Close()
		m.Entries = make([]state.Entry, 0, min(int(m.NumMessages), 1<<20)) // a hint only
		var uid int64
		var e state.Entry
		for rows.Next() {
			if err := rows.Scan(&uid, &e.UIDL, &e.Size, &e.Fingerprint, &e.Digest); err != nil {
				return err
			}
			if e.UID = u32(uid, "uid", &bad); bad != nil {
				return fmt.Errorf("UID %d out of range", uid)
			}
			m.Entries = append(m.Entries, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: load mailbox %q: %w", mailbox, classify(err))
	}
	return m, nil
}

// u32 converts a stored bigint that must hold a uint32, noting column in bad
// when it does not.
func u32(v int64, column string, bad *[]string) uint32 {
	if v < 0 || v > math.MaxUint32 {
		*bad = append(*bad, column)
		return 0
	}
	return uint32(v)
}

// putChunk is how many entries one INSERT sends.
const putChunk = 10_000

// ApplyMailbox applies ch to the record of mailbox if its version is still
// base, in one transaction, and returns the new version; otherwise it
// returns state.ErrConflict.
func (s *Store) ApplyMailbox(ctx context.Context, mailbox string, base uint64, ch state.MailboxChange) (uint64, error) {
	// One INSERT ... ON CONFLICT DO UPDATE may not touch a row twice:
	// keep the last entry of each UID.
	put := slices.Clone(ch.Put)
	slices.SortStableFunc(put, func(a, b state.Entry) int { return cmp.Compare(a.UID, b.UID) })
	put = dedupLast(put)

	mk := ch.Markers
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var sql string
		args := []any{mailbox, int64(mk.UIDValidity), int64(mk.UIDNext), int64(mk.NumMessages), int64(mk.HighestModSeq)}
		if base == 0 {
			sql = `INSERT INTO popbridge_mailbox (name, version, uid_validity, uid_next, num_messages, highest_modseq)
				VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING`
		} else {
			sql = `UPDATE popbridge_mailbox SET version = version + 1,
				uid_validity = $2, uid_next = $3, num_messages = $4, highest_modseq = $5
				WHERE name = $1 AND version = $6`
			args = append(args, int64(base))
		}
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return state.ErrConflict
		}

		if ch.Reset {
			if _, err := tx.Exec(ctx, `DELETE FROM popbridge_entry WHERE mailbox = $1`, mailbox); err != nil {
				return err
			}
		}
		if len(ch.Delete) > 0 {
			del := make([]int64, len(ch.Delete))
			for i, uid := range ch.Delete {
				del[i] = int64(uid)
			}
			if _, err := tx.Exec(ctx, `DELETE FROM popbridge_entry WHERE mailbox = $1 AND uid = ANY($2)`, mailbox, del); err != nil {
				return err
			}
		}
		for chunk := range slices.Chunk(put, putChunk) {
			uids := make([]int64, len(chunk))
			uidls := make([]string, len(chunk))
			sizes := make([]int64, len(chunk))
			fps := make([]string, len(chunk))
			digests := make([]string, len(chunk))
			for i, e := range chunk {
				uids[i], uidls[i], sizes[i], fps[i], digests[i] = int64(e.UID), e.UIDL, e.Size, e.Fingerprint, e.Digest
			}
			_, err := tx.Exec(ctx, `INSERT INTO popbridge_entry (mailbox, uid, uidl, size, fingerprint, digest)
				SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[])
				ON CONFLICT (mailbox, uid) DO UPDATE
				SET uidl = EXCLUDED.uidl, size = EXCLUDED.size, fingerprint = EXCLUDED.fingerprint, digest = EXCLUDED.digest`,
				mailbox, uids, uidls, sizes, fps, digests)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, state.ErrConflict) {
		return 0, state.ErrConflict
	}
	if err != nil {
		return 0, fmt.Errorf("pgstore: apply to mailbox %q: %w", mailbox, classify(err))
	}
	return base + 1, nil
}

// dedupLast keeps the last of each run of entries with the same UID in
// sorted entries.
func dedupLast(entries []state.Entry) []state.Entry {
	out := entries[:0]
	for i, e := range entries {
		if i+1 < len(entries) && entries[i+1].UID == e.UID {
			continue
		}
		out = append(out, e)
	}
	return out
}

// pendingJSON is the stored form of a state.Pending. Fields added later
// are omitted when empty, so that older rows read as Pendings without them.
type pendingJSON struct {
	Policy       string    `json:"policy"`
	Target       string    `json:"target,omitempty"`
	Flags        []string  `json:"flags,omitempty"`
	UIDValidity  uint32    `json:"uidvalidity"`
	UIDs         []uint32  `json:"uids,omitempty"`
	UIDLs        []string  `json:"uidls,omitempty"`
	Fingerprints []string  `json:"fingerprints,omitempty"`
	Digests      []string  `json:"digests,omitempty"`
	Created      time.Time `json:"created"`
	Attempts     int       `json:"attempts,omitempty"`
	Copied       []string  `json:"copied,omitempty"`
}

// LoadClient returns the record of k, or an empty Client when there is none.
// Hidden is never nil.
func (s *Store) LoadClient(ctx context.Context, k state.ClientKey) (*state.Client, error) {
	c := &state.Client{Hidden: make(map[string]bool)}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var (
			pending []byte
			last    *time.Time
		)
		err := tx.QueryRow(ctx, `SELECT pending, last_login FROM popbridge_client WHERE mailbox = $1 AND client = $2`, k.Mailbox, k.Client).Scan(&pending, &last)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if last != nil {
			c.LastLogin = last.UTC()
		}
		if pending != nil {
			var p pendingJSON
			if err := json.Unmarshal(pending, &p); err != nil {
				return fmt.Errorf("pending: %w", err)
			}
			c.Pending = &state.Pending{
				Policy: p.Policy, Target: p.Target, Flags: p.Flags,
				UIDValidity: p.UIDValidity, UIDs: p.UIDs, UIDLs: p.UIDLs,
				Fingerprints: p.Fingerprints, Digests: p.Digests,
				Created: p.Created.UTC(), Attempts: p.Attempts, Copied: p.Copied,
			}
		}
		rows, err := tx.Query(ctx, `SELECT uidl FROM popbridge_hidden WHERE mailbox = $1 AND client = $2`, k.Mailbox, k.Client)
		if err != nil {
			return err
		}
		var uidl string
		_, err = pgx.ForEachRow(rows, []any{&uidl}, func() error {
			c.Hidden[uidl] = true
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: load client %q of mailbox %q: %w", k.Client, k.Mailbox, classify(err))
	}
	return c, nil
}

// ApplyClient applies ch to the record of k in one transaction, creating the
// record if needed and deleting it when it ends up empty (no hidden UIDL,
// no pending UPDATE, no last login). A change that only sets the last login
// (the one of every login) is one statement, without a transaction.
func (s *Store) ApplyClient(ctx context.Context, k state.ClientKey, ch state.ClientChange) error {
	var last any // NULL: keep the stored last login
	if !ch.LastLogin.IsZero() {
		last = ch.LastLogin.Truncate(time.Microsecond)
	}
	// The DO UPDATE, which changes nothing but the last login when one is
	// given, takes the row lock, so that changes to one client record run
	// one after the other.
	const upsert = `INSERT INTO popbridge_client (mailbox, client, last_login) VALUES ($1, $2, $3::timestamptz)
		ON CONFLICT (mailbox, client) DO UPDATE SET last_login = COALESCE(EXCLUDED.last_login, popbridge_client.last_login)`
	if last != nil && len(ch.Hide) == 0 && len(ch.Unhide) == 0 && ch.SetPending == nil && !ch.ClearPending {
		if _, err := s.pool.Exec(ctx, upsert, k.Mailbox, k.Client, last); err != nil {
			return fmt.Errorf("pgstore: apply to client %q of mailbox %q: %w", k.Client, k.Mailbox, classify(err))
		}
		return nil
	}
	var pending []byte
	if p := ch.SetPending; p != nil {
		var err error
		pending, err = json.Marshal(pendingJSON{
			Policy: p.Policy, Target: p.Target, Flags: p.Flags,
			UIDValidity: p.UIDValidity, UIDs: p.UIDs, UIDLs: p.UIDLs,
			Fingerprints: p.Fingerprints, Digests: p.Digests,
			Created: p.Created.UTC(), Attempts: p.Attempts, Copied: p.Copied,
		})
		if err != nil {
			return fmt.Errorf("pgstore: %w", err)
		}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(upsert, k.Mailbox, k.Client, last)
		if len(ch.Unhide) > 0 {
			b.Queue(`DELETE FROM popbridge_hidden WHERE mailbox = $1 AND client = $2 AND uidl = ANY($3)`, k.Mailbox, k.Client, ch.Unhide)
		}
		if len(ch.Hide) > 0 {
			b.Queue(`INSERT INTO popbridge_hidden (mailbox, client, uidl) SELECT $1, $2, unnest($3::text[])
				ON CONFLICT DO NOTHING`, k.Mailbox, k.Client, ch.Hide)
		}
		if ch.ClearPending {
			b.Queue(`UPDATE popbridge_client SET pending = NULL WHERE mailbox = $1 AND client = $2`, k.Mailbox, k.Client)
		}
		if pending != nil {
			b.Queue(`UPDATE popbridge_client SET pending = $3::text::jsonb WHERE mailbox = $1 AND client = $2`, k.Mailbox, k.Client, string(pending))
		}
		b.Queue(`DELETE FROM popbridge_client c WHERE mailbox = $1 AND client = $2 AND pending IS NULL AND last_login IS NULL
			AND NOT EXISTS (SELECT 1 FROM popbridge_hidden h WHERE h.mailbox = $1 AND h.client = $2)`, k.Mailbox, k.Client)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("pgstore: apply to client %q of mailbox %q: %w", k.Client, k.Mailbox, classify(err))
	}
	return nil
}

// lockKey is the text whose hash names the advisory lock of k. The length
// prefix keeps ("ab", "c") and ("a", "bc") apart.
func lockKey(k state.ClientKey) string {
	return "popbridge maildrop " + strconv.Itoa(len(k.Mailbox)) + ":" + k.Mailbox + k.Client
}

// Lock takes the maildrop lock of k for every Store on the database, or
// returns state.ErrLocked at once when one of them holds it. The lock keeps
// a connection until release.
func (s *Store) Lock(ctx context.Context, k state.ClientKey) (release func(), err error) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, errClosed
	case s.slots >= s.maxLocks:
		s.mu.Unlock()
		return nil, fmt.Errorf("pgstore: %d maildrop locks held, the most Options.MaxLocks allows", s.maxLocks)
	}
	s.slots++
	s.mu.Unlock()
	l, err := s.lock(ctx, k)
	if err != nil {
		s.mu.Lock()
		s.slots--
		s.mu.Unlock()
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { s.unlock(l) }) }, nil
}

var errClosed = errors.New("pgstore: store closed")

// classify marks the server's errors that last until someone acts: a
// full disk (SQLSTATE 53100, disk_full) as state.ErrFull, damaged data
// (XX001 data_corrupted, XX002 index_corrupted) as state.ErrDamaged.
func classify(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case "53100":
		return fmt.Errorf("%w: %w", state.ErrFull, err)
	case "XX001", "XX002":
		return fmt.Errorf("%w: %w", state.ErrDamaged, err)
	}
	return err
}

// lock takes the advisory lock of k on a connection of the lock pool.
func (s *Store) lock(ctx context.Context, k state.ClientKey) (*heldLock, error) {
	conn, err := s.lockPool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgstore: lock: %w", err)
	}
	l := &heldLock{conn: conn, key: lockKey(k), slot: true}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, l.key).Scan(&ok); err != nil {
		discard(conn)
		return nil, fmt.Errorf("pgstore: lock: %w", err)
	}
	if !ok {
		conn.Release()
		return nil, state.ErrLocked
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		discard(conn)
		return nil, errClosed
	}
	s.held[l] = struct{}{}
	return l, nil
}

// unlock frees l, unless Close did already.
func (s *Store) unlock(l *heldLock) {
	s.mu.Lock()
	_, held := s.held[l]
	if held {
		delete(s.held, l)
		if l.slot {
			s.slots--
		}
	}
	s.mu.Unlock()
	if !held {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ok bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, l.key).Scan(&ok); err != nil || !ok {
		// The connection must not go back to the pool with a lock it
		// may still hold; closing it ends its locks.
		discard(l.conn)
		return
	}
	l.conn.Release()
}

// discard closes a pooled connection, which frees its advisory locks, and
// lets the pool forget it.
func discard(c *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Conn().Close(ctx)
	c.Release()
}

// Ping implements state.Pinger: a round trip to the database.
func (s *Store) Ping(ctx context.Context) error {
	return s.pool.Ping(ctx)
}

// Close frees the locks still held, which ends their sessions' claim on the
// maildrops, makes LockGrant calls that wait fail, and closes the pools.
// Release functions may still be called.
func (s *Store) Close() error {
	s.close()
	s.mu.Lock()
	s.closed = true
	held := s.held
	s.held = map[*heldLock]struct{}{}
	s.slots = 0
	grants := s.grantsHeld
	s.grantsHeld = map[*heldGrant]struct{}{}
	s.mu.Unlock()
	for l := range grants {
		unlockGrant(l)
	}
	for l := range held {
		// Unlock explicitly: a closed connection's locks are freed only
		// when the server notices, a moment later.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		l.conn.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, l.key)
		cancel()
		discard(l.conn)
	}
	s.grantPool.Close()
	s.lockPool.Close()
	s.pool.Close()
	return nil
}

// updateLockKey is the text whose hash names the update lock of mailbox;
// its prefix keeps it apart from the maildrop locks (lockKey).
func updateLockKey(mailbox string) string {
	return "popbridge update " + mailbox
}

// LockUpdate takes the update lock of mailbox for every Store on the
// database: pg_advisory_lock on a connection of the lock pool, which waits
// in the server until the holder releases it, at most until ctx's deadline
// (lock_timeout). The connection is kept until release.
func (s *Store) LockUpdate(ctx context.Context, mailbox string) (release func(), err error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	conn, err := s.lockPool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgstore: update lock of %q: %w", mailbox, err)
	}
	l := &heldLock{conn: conn, key: updateLockKey(mailbox)}
	// 0 is no limit; a context without a deadline waits until canceled.
	timeout := "0"
	if d, ok := ctx.Deadline(); ok {
		timeout = strconv.FormatInt(max(time.Until(d).Milliseconds(), 1), 10)
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// A session-level advisory lock outlives the transaction, which
		// only scopes the timeout.
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, timeout); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended($1, 0))`, l.key)
		return err
	})
	if err != nil {
		// The connection may hold the lock (an error after it was
		// granted) or still wait for it: closing it ends both.
		discard(conn)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available: lock_timeout
			err = context.DeadlineExceeded
		} else if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
		return nil, fmt.Errorf("pgstore: waiting for the update lock of %q: %w", mailbox, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		discard(conn)
		return nil, errClosed
	}
	s.held[l] = struct{}{}
	var once sync.Once
	return func() { once.Do(func() { s.unlock(l) }) }, nil
}

// RenameMailbox implements state.Store.RenameMailbox in one transaction. The
// old mailbox row is locked first, so that of two renames of one record the
// second finds it gone; the new row is inserted with ON CONFLICT DO NOTHING,
// so that a record created under the new name meanwhile wins.
func (s *Store) RenameMailbox(ctx context.Context, from, to string) (bool, error) {
	if from == to {
		return false, nil
	}
	renamed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var taken bool
		err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM popbridge_mailbox WHERE name = $1)
			OR EXISTS (SELECT 1 FROM popbridge_client WHERE mailbox = $1)`, to).Scan(&taken)
		if err != nil || taken {
			return err
		}
		var version int64
		err = tx.QueryRow(ctx, `SELECT version FROM popbridge_mailbox WHERE name = $1 FOR UPDATE`, from).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO popbridge_mailbox (name, version, uid_validity, uid_next, num_messages, highest_modseq)
			SELECT $2, version, uid_validity, uid_next, num_messages, highest_modseq FROM popbridge_mailbox WHERE name = $1
			ON CONFLICT (name) DO NOTHING`, from, to)
		if err != nil || tag.RowsAffected() != 1 {
			return err
		}
		b := &pgx.Batch{}
		b.Queue(`UPDATE popbridge_entry SET mailbox = $2 WHERE mailbox = $1`, from, to)
		b.Queue(`INSERT INTO popbridge_client (mailbox, client, pending, last_login) SELECT $2, client, pending, last_login FROM popbridge_client WHERE mailbox = $1`, from, to)
		b.Queue(`UPDATE popbridge_hidden SET mailbox = $2 WHERE mailbox = $1`, from, to)
		b.Queue(`DELETE FROM popbridge_client WHERE mailbox = $1`, from)
		b.Queue(`DELETE FROM popbridge_mailbox WHERE name = $1`, from)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		renamed = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("pgstore: rename mailbox %q to %q: %w", from, to, err)
	}
	return renamed, nil
}

// MailboxVersion implements state.Versioner.
func (s *Store) MailboxVersion(ctx context.Context, mailbox string) (uint64, error) {
	var version int64
	err := s.pool.QueryRow(ctx, `SELECT version FROM popbridge_mailbox WHERE name = $1`, mailbox).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return uint64(version), nil
}
