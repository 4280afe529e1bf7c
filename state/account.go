package state

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by LoadAccount and DeleteAccount for an account
// that is not stored.
var ErrNotFound = errors.New("state: not found")

// Account is the record of one enrolled account: a POP3 login name that
// popbridge answers itself, with its own app passwords, instead of passing
// the login through to the upstream. The store keeps it as it is given; what
// the fields mean, and all cryptography, belong to bridge/account. Secrets
// are in it only sealed: SealedGrant under the account's data key, and the
// data key only wrapped (WrappedDEK, ServerWrappedDEK).
//
// Stores may keep times with microsecond precision only, and return them in
// UTC; the zero time comes back as the zero time.
type Account struct {
	Name     string // the login name without device tag; the key of the record
	Kind     string // "delegated" or "app-only"
	Upstream string // name of a configured upstream
	Provider string // name of an OAuth provider preset
	Identity string // the upstream identity: the token's owner
	Mailbox  string // another mailbox the identity opens, or ""

	Passwords []AppPassword // in the order given

	DEKVersion       uint64 // grows when the data key is replaced
	ServerWrappedDEK []byte // the data key under the server key, or nil

	SealedGrant  []byte    // the OAuth grant under the data key, or nil
	GrantVersion uint64    // grows with every new SealedGrant
	GrantExpiry  time.Time // expiry of the sealed access token, zero when unknown
	GrantUpdated time.Time // when SealedGrant was last written
	GrantStatus  string    // "ok" or "reconsent-needed"
	GrantReason  string    // why, for a status other than "ok"
	GrantSince   time.Time // when GrantStatus was set

	Version uint64 // 0 when never stored; grows by one with each PutAccount
	Created time.Time
	Updated time.Time
}

// AppPassword is one app password of an account, kept as an argon2id hash
// and the data key wrapped under a key derived from the password.
type AppPassword struct {
	Label      string // unique within the account
	Hash       string // PHC string
	WrappedDEK []byte
	Created    time.Time
	LastUsed   time.Time // zero when never used
}

// AccountStore is an optional interface of a Store: it keeps account
// records and holds grant locks. Implementations are safe for concurrent
// use; a record is written whole and atomically, and a write that returned
// survives a crash (bbolt fsyncs its commit, PostgreSQL commits).
type AccountStore interface {
	// LoadAccount returns the record of name, or ErrNotFound.
	LoadAccount(ctx context.Context, name string) (*Account, error)
	// ListAccounts returns every record, ordered by name.
	ListAccounts(ctx context.Context) ([]*Account, error)
	// PutAccount stores a if the stored record's version is still
	// a.Version (0: no record of that name exists) and returns the new
	// version, a.Version+1; otherwise it changes nothing and returns
	// ErrConflict. It does not modify a.
	PutAccount(ctx context.Context, a *Account) (uint64, error)
	// DeleteAccount removes the record of name, or returns ErrNotFound.
	DeleteAccount(ctx context.Context, name string) error
	// LockGrant takes the grant lock of name for every store that shares
	// the records (all instances on one PostgreSQL database), waiting
	// until it is free or ctx ends. release frees it and may be called
	// more than once. Grant locks are apart from maildrop locks: a grant
	// lock and a maildrop lock with the same name do not exclude each
	// other.
	LockGrant(ctx context.Context, name string) (release func(), err error)
}
