// Package pgstore is the shared state.Store: several popbridge processes on
// one PostgreSQL database see the same records and the same maildrop locks.
//
// # Tables
//
// Open creates and migrates them with the SQL files embedded from
// migrations/, in one transaction under an advisory lock, so that instances
// starting together do not race; popbridge_schema holds the number of the
// last file applied, and Open refuses a database migrated by a newer
// popbridge.
//
//	popbridge_mailbox  name PRIMARY KEY, version, uid_validity, uid_next,
//	                   num_messages, highest_modseq
//	popbridge_entry    (mailbox, uid) PRIMARY KEY, uidl, size, fingerprint,
//	                   digest ('' when none; schema 3)
//	popbridge_client   (mailbox, client) PRIMARY KEY, pending (jsonb or NULL),
//	                   last_login (timestamptz or NULL; schema 4)
//	popbridge_hidden   (mailbox, client, uidl) PRIMARY KEY
//	popbridge_account  name PRIMARY KEY, version, kind, upstream, provider,
//	                   identity, mailbox, dek_version, server_wrapped_dek,
//	                   sealed_grant, grant_version, grant_expiry,
//	                   grant_updated, grant_status, grant_reason,
//	                   grant_since, created, updated
//	popbridge_account_password (account, position) PRIMARY KEY, label,
//	                   hash, wrapped_dek, created, last_used
//
// Account times and a client's last login are timestamptz (microseconds,
// truncated; the zero time is NULL); the
// sealed and wrapped secrets are bytea; ListAccounts orders by name
// COLLATE "C", the bytes of the name.
//
// Names, UIDLs and the strings of a pending UPDATE are text columns, so they
// must be valid in the database encoding and hold no NUL byte; the database
// refuses others with an error. UIDs and the other 32-bit numbers are bigint;
// the version and HIGHESTMODSEQ, which are unsigned 64-bit, are stored as
// the bigint with the same 64 bits. A pending UPDATE is JSON with Created in
// RFC 3339 with nanoseconds; the fields added later (attempts, fingerprints,
// digests) are left out when empty, so rows written before them read back
// as Pendings without them.
//
// # Concurrency
//
// ApplyMailbox runs in one READ COMMITTED transaction whose first statement
// moves the version on only from base (UPDATE ... WHERE version = base, or
// INSERT ... ON CONFLICT DO NOTHING for base 0): of two changes from the
// same base, the second waits for the row lock of the first and then finds
// nothing to update, and returns state.ErrConflict. ApplyClient first locks
// the client row (its upsert sets the last login, when the change has one),
// so changes to one client record run one after the other; a change that
// only sets the last login is that upsert alone, outside a transaction.
// Loads read in one REPEATABLE READ transaction, so a record is never seen
// half changed.
//
// Lock runs pg_try_advisory_lock(hashtextextended(key, 0)) on a connection
// of a second pool kept for locks and holds that connection until release,
// so each open POP3 session keeps one connection to PostgreSQL. When the
// connection dies the server frees its lock.
//
// PutAccount is a compare-and-swap like ApplyMailbox: UPDATE ... WHERE
// version = base (INSERT ... ON CONFLICT DO NOTHING for base 0), then the
// account's passwords are replaced, in one transaction. LockGrant waits in
// pg_advisory_lock(0x706f7062, hashtext(name)) on a connection of a third
// pool (Options.MaxGrantLocks connections), held until release. Locks on
// two int4 keys are a key space apart from the bigint keys of maildrop
// locks; two account names with the same 32-bit hash share a lock, which
// only makes one wait for the other. A wait that ends with its context is
// cancelled on the server, and its connection closed.
//
// LockUpdate runs pg_advisory_lock(hashtextextended("popbridge update " ||
// mailbox, 0)) on another connection of the lock pool, inside a transaction
// that only sets lock_timeout from the context's deadline: it waits in the
// server until the holder releases it, and the session-level lock outlives
// that transaction until release. Its key text differs from the maildrop
// locks' ("popbridge maildrop ..."), so the two never share a lock.
//
// RenameMailbox runs in one transaction: it checks that the new name is free,
// locks the old mailbox row (FOR UPDATE: of two renames the second then finds
// it gone), inserts the new row (ON CONFLICT DO NOTHING, so a record created
// under the new name meanwhile wins), moves the entries, client rows and
// hidden rows, and deletes the old rows.
//
// # Building
//
// The implementation needs github.com/jackc/pgx/v5/pgxpool, whose
// dependency github.com/jackc/puddle/v2 is not yet in go.sum; until it is
// (go get github.com/jackc/pgx/v5/pgxpool@v5.12.0), the files carry the
// build constraint "pgstore" so that the module builds without them.
package pgstore
