// Package state defines how popbridge remembers, per upstream mailbox, the
// UIDL it gave each message, and per POP3 client (mailbox + device tag), the
// messages that client hid and the UPDATE it has not finished yet.
//
// Two records exist:
//
//   - the mailbox record, one per upstream mailbox (account + mailbox name),
//     shared by every client of that mailbox: the sync markers seen at the
//     last login (UIDVALIDITY, UIDNEXT, message count, HIGHESTMODSEQ) and one
//     Entry per message (UID, size, UIDL, fingerprint);
//   - the client record, one per (mailbox, client): the UIDLs this client
//     deleted with the flag or hide policies (its private view), the
//     pending UPDATE written before popbridge touches the upstream at QUIT,
//     and the time of the client's last successful login.
//
// A third record, the account record (account.go), belongs to the optional
// AccountStore interface: an enrolled account, its app passwords and its
// OAuth grant, the secrets only sealed (see bridge/account).
//
// Store is implemented by state/boltstore (embedded, the default) and
// state/pgstore (shared by several instances); both implement AccountStore. state/storetest holds the
// conformance suite both must pass. The pure logic that turns an upstream
// listing and a stored record into a change lives here too (reconcile.go).
package state

import (
	"context"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrConflict is returned by ApplyMailbox when the stored version is no
	// longer the base the change was computed from.
	ErrConflict = errors.New("state: concurrent update")
	// ErrLocked is returned by Lock when another session holds the lock.
	ErrLocked = errors.New("state: maildrop locked")
	// ErrDamaged is wrapped by the errors of a Store whose data is
	// damaged (a value that does not decode, a broken page): trying
	// again will not help.
	ErrDamaged = errors.New("damaged")
	// ErrFull is wrapped by the errors of a Store that has no room left
	// for a change (its disk is full). Stores that write files return
	// the system's error (ENOSPC, EDQUOT) wrapped instead.
	ErrFull = errors.New("store full")
)

// Entry is one message of a mailbox record.
type Entry struct {
	UID         uint32 // in the record's UIDVALIDITY
	UIDL        string // issued at first sight, never changed, never reused
	Size        int64  // octets RETR sends (CRLF line ends)
	Fingerprint string // identifies the message across UIDVALIDITY changes
	// Digest is the content digest (see FormatDigest) of a message whose
	// Fingerprint another message of the mailbox shares, taken when that
	// tie was first seen; "" for every other message. Twins (the same
	// Message-ID, INTERNALDATE and size, different bodies) are told apart
	// by it after a UIDVALIDITY change (see Rematch).
	Digest string
}

// Markers are what the upstream said about the mailbox at the last sync.
// A zero NumMessages or UIDNext means unknown: the next login checks in full.
type Markers struct {
	UIDValidity   uint32
	UIDNext       uint32
	NumMessages   uint32
	HighestModSeq uint64 // 0 without CONDSTORE
}

// Mailbox is the record of one upstream mailbox.
type Mailbox struct {
	Version uint64 // 0 when never stored; grows by one with each ApplyMailbox
	Markers
	Entries []Entry // ascending UID, unique UIDs and unique UIDLs
}

// MailboxChange is applied atomically by ApplyMailbox.
type MailboxChange struct {
	Markers Markers  // always written
	Reset   bool     // remove every entry before Put (UIDVALIDITY changed)
	Delete  []uint32 // UIDs to remove; applied before Put
	Put     []Entry  // entries to insert, or replace when their UID exists
}

// ClientKey names one POP3 client's view of one upstream mailbox.
type ClientKey struct {
	Mailbox string // the mailbox record's name
	Client  string // the device tag of the login, "" when none
}

// Pending is an UPDATE that was decided at QUIT and may not have reached the
// upstream yet. It is written before the upstream is touched and removed once
// the upstream confirmed it, so a crash or a temporary failure in between is
// finished at the client's next login. A replay is tried a bounded number of
// times (Attempts) over a bounded time from Created, and then dropped.
type Pending struct {
	Policy      string   // "move", "expunge", "flag" or "hide"
	Target      string   // destination mailbox of "move"
	Flags       []string // flags of "flag"
	UIDValidity uint32   // of UIDs
	UIDs        []uint32 // ascending
	UIDLs       []string // UIDLs[i] belongs to UIDs[i]
	// Fingerprints[i] and Digests[i] are the Fingerprint and Digest of the
	// entry of UIDLs[i] when QUIT decided the UPDATE, so that a replay after
	// a UIDVALIDITY change acts only on the very message DELE'd (see
	// ReplayTargets). Both are nil in a Pending stored before they existed.
	Fingerprints []string
	Digests      []string
	// Created is when QUIT decided the UPDATE, just before its first
	// attempt upstream; the age bound of the replays counts from it.
	Created time.Time
	// Attempts counts the attempts upstream that failed so far.
	Attempts int
	// Copied are the UIDLs (of UIDLs) whose messages a UID COPY has already
	// put into Target: the move policy on a server without MOVE copies,
	// records what the server reported copied (COPYUID) here, and only then
	// flags and expunges. A retry copies only the others, so a message is
	// never copied twice.
	Copied []string
}

// Client is the record of one (mailbox, client).
type Client struct {
	Hidden  map[string]bool // UIDLs this client no longer sees
	Pending *Pending        // nil when no UPDATE is outstanding
	// LastLogin is when this client last logged in and had its maildrop
	// opened, in UTC and to the microsecond; the zero time when it never
	// did since popbridge began to record it.
	LastLogin time.Time
}

// ClientChange is applied atomically by ApplyClient. Unhide is applied
// before Hide; ClearPending before SetPending.
type ClientChange struct {
	Hide         []string
	Unhide       []string
	SetPending   *Pending
	ClearPending bool
	// LastLogin, when not the zero time, replaces the record's last
	// login. Stores keep it to the microsecond (finer is truncated) and
	// give it back in UTC. A record with a last login is kept even when
	// nothing is hidden and nothing pending.
	LastLogin time.Time
}

// Store persists mailbox and client records and holds the maildrop locks.
// Implementations are safe for concurrent use.
type Store interface {
	// LoadMailbox returns the record of mailbox, or a zero Mailbox (Version
	// 0, no entries) when there is none.
	LoadMailbox(ctx context.Context, mailbox string) (*Mailbox, error)
	// ApplyMailbox applies ch if the stored version is still base (0 for a
	// record not stored yet) and returns the new version; otherwise it
	// changes nothing and returns ErrConflict.
	ApplyMailbox(ctx context.Context, mailbox string, base uint64, ch MailboxChange) (uint64, error)
	// LoadClient returns the record of k, or an empty Client when there is none.
	LoadClient(ctx context.Context, k ClientKey) (*Client, error)
	// ApplyClient applies ch to the record of k, creating it if needed.
	ApplyClient(ctx context.Context, k ClientKey, ch ClientChange) error
	// Lock takes the exclusive maildrop lock of k (RFC 1939 §8) for every
	// session that shares this store, or returns ErrLocked at once when it is
	// held. release frees it and may be called more than once.
	Lock(ctx context.Context, k ClientKey) (release func(), err error)
	// LockUpdate takes the update lock of mailbox for every session that
	// shares this store, waiting while another session holds it, until ctx
	// ends (then it returns an error that wraps ctx's). The UPDATEs that
	// change one upstream mailbox run under it one after the other, so two
	// devices that delete the same message do not both move it. It is
	// independent of the maildrop locks (Lock). release frees it and may be
	// called more than once.
	LockUpdate(ctx context.Context, mailbox string) (release func(), err error)
	// RenameMailbox gives the mailbox record named from, and every client
	// record of from, the name to, in one step, provided that from has a
	// mailbox record and to has none and no client record either. It
	// reports whether it renamed; otherwise nothing changed. The record
	// keeps its version, entries and markers; client records keep their
	// hidden UIDLs and pending UPDATE.
	RenameMailbox(ctx context.Context, from, to string) (bool, error)
	// Close releases the store's resources.
	Close() error
}

// Pinger is an optional interface of a Store: Ping reports whether the
// store answers now (for readiness probes). It changes nothing.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Versioner is an optional interface of a Store: MailboxVersion returns the
// version of a mailbox record (0 when there is none) without reading its
// entries, so that a caller holding that version in memory can skip
// LoadMailbox.
type Versioner interface {
	MailboxVersion(ctx context.Context, mailbox string) (uint64, error)
}

// Config is the [state] table of the configuration: which store keeps the
// records (state/stores opens it).
type Config struct {
	Driver string `toml:"driver"` // bolt | postgres
	Path   string `toml:"path"`   // bolt: the database file
	DSN    string `toml:"dsn"`    // postgres: the connection string
	// DSNFile names a file holding the connection string instead (read
	// when the configuration is loaded), so that its password stays out of
	// the configuration file and the process list. Not with DSN.
	DSNFile string `toml:"dsn_file,file"`
	// InitEmpty lets the bolt driver start on an existing file of 0 bytes
	// as a new state file. Without it popbridge refuses such a file: it
	// lost the UIDLs and pending deletions it held. Set it once, on purpose
	// (or run serve -init-state), then remove it again.
	InitEmpty bool `toml:"init_empty"`
}

// Check reports each problem of c to add, with the key (within the table)
// it concerns.
func (c *Config) Check(add func(key, msg string)) {
	switch c.Driver {
	case "bolt":
		if c.Path == "" {
			add("path", "the bolt driver needs a file path")
		}
	case "postgres":
		if c.DSN == "" {
			add("dsn", "the postgres driver needs a connection string")
		}
	default:
		add("driver", fmt.Sprintf("unknown value %q (want bolt or postgres)", c.Driver))
	}
}
