package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/popbridge/popbridge/state"
)

var _ state.AccountStore = (*Store)(nil)

// grantLockSpace is the first key of every grant lock,
// pg_advisory_lock(grantLockSpace, hashtext(name)): PostgreSQL keeps locks
// on two int4 keys apart from locks on one bigint key, which maildrop locks
// use, so the two kinds never collide.
const grantLockSpace = 0x706f7062 // "popb"

// ts is a time for a timestamptz column: NULL for the zero time.
func ts(t time.Time) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

// fromTS is the time of a timestamptz column, in UTC.
func fromTS(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

const accountColumns = `name, version, kind, upstream, provider, identity, mailbox, dek_version,
	server_wrapped_dek, sealed_grant, grant_version, grant_expiry, grant_updated, grant_status,
	grant_reason, grant_since, created, updated`

// scanAccount reads a row of accountColumns.
func scanAccount(row pgx.Row) (*state.Account, error) {
	a := &state.Account{}
	var version, dekVersion, grantVersion int64
	var expiry, updatedGrant, since, created, updated pgtype.Timestamptz
	err := row.Scan(&a.Name, &version, &a.Kind, &a.Upstream, &a.Provider, &a.Identity, &a.Mailbox, &dekVersion,
		&a.ServerWrappedDEK, &a.SealedGrant, &grantVersion, &expiry, &updatedGrant, &a.GrantStatus,
		&a.GrantReason, &since, &created, &updated)
	if err != nil {
		return nil, err
	}
	a.Version, a.DEKVersion, a.GrantVersion = uint64(version), uint64(dekVersion), uint64(grantVersion)
	a.GrantExpiry, a.GrantUpdated, a.GrantSince = fromTS(expiry), fromTS(updatedGrant), fromTS(since)
	a.Created, a.Updated = fromTS(created), fromTS(updated)
	if a.Version == 0 {
		return nil, fmt.Errorf("account %q: version 0", a.Name)
	}
	return a, nil
}

// scanPassword reads a row of account, label, hash, wrapped_dek, created,
// last_used.
func scanPassword(rows pgx.Rows) (string, state.AppPassword, error) {
	var account string
	var p state.AppPassword
	var created, lastUsed pgtype.Timestamptz
	err := rows.Scan(&account, &p.Label, &p.Hash, &p.WrappedDEK, &created, &lastUsed)
	p.Created, p.LastUsed = fromTS(created), fromTS(lastUsed)
	return account, p, err
}

const passwordColumns = `account, label, hash, wrapped_dek, created, last_used`

// LoadAccount returns the record of name, or state.ErrNotFound.
func (s *Store) LoadAccount(ctx context.Context, name string) (*state.Account, error) {
	var a *state.Account
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		a, err = scanAccount(tx.QueryRow(ctx, `SELECT `+accountColumns+` FROM popbridge_account WHERE name = $1`, name))
		if errors.Is(err, pgx.ErrNoRows) {
			return state.ErrNotFound
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+passwordColumns+` FROM popbridge_account_password WHERE account = $1 ORDER BY position`, name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			_, p, err := scanPassword(rows)
			if err != nil {
				return err
			}
			a.Passwords = append(a.Passwords, p)
		}
		return rows.Err()
	})
	if errors.Is(err, state.ErrNotFound) {
		return nil, state.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: load account %q: %w", name, err)
	}
	return a, nil
}

// ListAccounts returns every account record, ordered by the bytes of the
// name.
func (s *Store) ListAccounts(ctx context.Context) ([]*state.Account, error) {
	var list []*state.Account
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		list = nil
		rows, err := tx.Query(ctx, `SELECT `+accountColumns+` FROM popbridge_account ORDER BY name COLLATE "C"`)
		if err != nil {
			return err
		}
		byName := map[string]*state.Account{}
		for rows.Next() {
			a, err := scanAccount(rows)
			if err != nil {
				rows.Close()
				return err
			}
			list = append(list, a)
			byName[a.Name] = a
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT `+passwordColumns+` FROM popbridge_account_password ORDER BY account, position`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			account, p, err := scanPassword(rows)
			if err != nil {
				return err
			}
			if a := byName[account]; a != nil {
				a.Passwords = append(a.Passwords, p)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: list accounts: %w", err)
	}
	return list, nil
}

// PutAccount stores a in one transaction if the stored version is still
// a.Version, and returns the new version; otherwise it returns
// state.ErrConflict.
func (s *Store) PutAccount(ctx context.Context, a *state.Account) (uint64, error) {
	args := []any{a.Name, int64(a.Version + 1), a.Kind, a.Upstream, a.Provider, a.Identity, a.Mailbox, int64(a.DEKVersion),
		a.ServerWrappedDEK, a.SealedGrant, int64(a.GrantVersion), ts(a.GrantExpiry), ts(a.GrantUpdated), a.GrantStatus,
		a.GrantReason, ts(a.GrantSince), ts(a.Created), ts(a.Updated)}
	n := len(a.Passwords)
	positions := make([]int32, n)
	labels := make([]string, n)
	hashes := make([]string, n)
	wrapped := make([][]byte, n)
	created := make([]pgtype.Timestamptz, n)
	lastUsed := make([]pgtype.Timestamptz, n)
	for i, p := range a.Passwords {
		positions[i], labels[i], hashes[i], wrapped[i] = int32(i), p.Label, p.Hash, p.WrappedDEK
		created[i], lastUsed[i] = ts(p.Created), ts(p.LastUsed)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var sql string
		if a.Version == 0 {
			sql = `INSERT INTO popbridge_account (` + accountColumns + `)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
				ON CONFLICT (name) DO NOTHING`
		} else {
			// The row lock of the UPDATE makes a second writer from
			// the same version wait, then find no row to update.
			sql = `UPDATE popbridge_account SET version = $2, kind = $3, upstream = $4, provider = $5,
				identity = $6, mailbox = $7, dek_version = $8, server_wrapped_dek = $9, sealed_grant = $10,
				grant_version = $11, grant_expiry = $12, grant_updated = $13, grant_status = $14,
				grant_reason = $15, grant_since = $16, created = $17, updated = $18
				WHERE name = $1 AND version = $19`
			args = append(args, int64(a.Version))
		}
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return state.ErrConflict
		}
		b := &pgx.Batch{}
		b.Queue(`DELETE FROM popbridge_account_password WHERE account = $1`, a.Name)
		if n > 0 {
			b.Queue(`INSERT INTO popbridge_account_password (account, position, label, hash, wrapped_dek, created, last_used)
				SELECT $1, * FROM unnest($2::integer[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::timestamptz[])`,
				a.Name, positions, labels, hashes, wrapped, created, lastUsed)
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if errors.Is(err, state.ErrConflict) {
		return 0, state.ErrConflict
	}
	if err != nil {
		return 0, fmt.Errorf("pgstore: put account %q: %w", a.Name, err)
	}
	return a.Version + 1, nil
}

// DeleteAccount removes the record of name and its passwords, or returns
// state.ErrNotFound.
func (s *Store) DeleteAccount(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM popbridge_account WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("pgstore: delete account %q: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return state.ErrNotFound
	}
	return nil
}

// heldGrant is a grant lock and the connection that holds it.
type heldGrant struct {
	conn *pgxpool.Conn
	name string
}

// LockGrant takes the grant lock of name for every Store on the database,
// waiting in pg_advisory_lock on a connection of the grant pool until it is
// free, ctx ends or the Store is closed.
func (s *Store) LockGrant(ctx context.Context, name string) (release func(), err error) {
	if s.isClosed() {
		return nil, errClosed
	}
	// Close ends the wait too.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.closing, cancel)
	defer stop()

	conn, err := s.grantPool.Acquire(ctx)
	if err != nil {
		return nil, s.lockGrantErr(ctx, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, int32(grantLockSpace), name); err != nil {
		// The wait was cancelled, or the connection failed: whether the
		// lock was granted meanwhile is unknown, and closing the
		// connection frees it if so.
		discard(conn)
		return nil, s.lockGrantErr(ctx, err)
	}
	l := &heldGrant{conn: conn, name: name}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		unlockGrant(l)
		return nil, errClosed
	}
	s.grantsHeld[l] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			_, held := s.grantsHeld[l]
			delete(s.grantsHeld, l)
			s.mu.Unlock()
			if held {
				unlockGrant(l)
			}
		})
	}, nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// lockGrantErr reports why LockGrant failed: the caller's context, Close,
// or the database.
func (s *Store) lockGrantErr(ctx context.Context, err error) error {
	switch {
	case s.closing.Err() != nil:
		return errClosed
	case ctx.Err() != nil:
		return context.Cause(ctx)
	}
	return fmt.Errorf("pgstore: grant lock: %w", err)
}

// unlockGrant frees l and gives its connection back, or closes the
// connection when the unlock fails.
func unlockGrant(l *heldGrant) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ok bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, int32(grantLockSpace), l.name).Scan(&ok); err != nil || !ok {
		discard(l.conn)
		return
	}
	l.conn.Release()
}
