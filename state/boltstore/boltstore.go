package boltstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/popbridge/popbridge/state"
)

// DefaultTimeout is how long Open waits for the file lock when Options do not
// say otherwise.
const DefaultTimeout = time.Second

// Options tune Open. A nil *Options is equivalent to a zero Options value.
type Options struct {
	// Timeout is how long Open waits for another holder of the file to let
	// go of it before failing; zero or less means DefaultTimeout.
	Timeout time.Duration
	// InitEmpty lets Open turn an existing file of 0 bytes into a new
	// state file. Without it such a file is refused with ErrEmptyFile: a
	// state file that lost its contents (truncated, a full disk, a restore
	// gone wrong) must not silently become an empty one, since that would
	// issue new UIDLs and forget pending deletions. A missing file is
	// always created.
	InitEmpty bool
}

// ErrEmptyFile is returned by Open for an existing file of 0 bytes when
// Options.InitEmpty is not set.
var ErrEmptyFile = errors.New("the state file is empty (0 bytes)")

// Store is a state.Store kept in one bbolt file. Its methods are safe for
// concurrent use. The Hidden map of a Client it loads is never nil.
type Store struct {
	db   *bolt.DB
	path string

	mu     sync.Mutex
	locks  map[state.ClientKey]struct{} // maildrop locks held now
	done   chan struct{}                // closed by Close
	waits  map[string]*waitLock         // update and grant locks held or waited for
	closed bool
}

// waitLock is one lock that sessions wait for (LockUpdate, LockGrant): a
// slot taken by its holder, and the count of sessions holding or waiting
// for it, so that the entry goes when no one uses it.
type waitLock struct {
	slot chan struct{}
	refs int
}

var _ state.Store = (*Store)(nil)

// errClosed is returned by Lock after Close.
var errClosed = errors.New("store closed")

// Open opens the state file at path, creating it (mode 0600) if it does not
// exist. It fails if another Store, in this process or another, holds the
// file and does not close it within the timeout, if the file is not a
// popbridge state file of a format this build reads, or if it exists but is
// empty (ErrEmptyFile, unless Options.InitEmpty).
func Open(path string, opts *Options) (s *Store, err error) {
	timeout := DefaultTimeout
	if opts != nil && opts.Timeout > 0 {
		timeout = opts.Timeout
	}
	// bbolt lays out any file of 0 bytes as a new database, without a
	// word. A file that exists had contents once (or was made by hand).
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 && (opts == nil || !opts.InitEmpty) {
		return nil, fmt.Errorf("boltstore: %s: %w, so the UIDLs issued and any pending deletions it held are gone; "+
			"refusing to start on it as if it were new. Restore it from a backup, or, to start over with an empty state "+
			"(clients that keep mail on the server may download it all again), remove the file or set Options.InitEmpty",
			path, ErrEmptyFile)
	}
	db, err := openDB(path, timeout)
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: %s is held by another Store, in this process or another (file lock not obtained within %v): %w", path, timeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	s = &Store{db: db, path: path, locks: make(map[state.ClientKey]struct{}), waits: make(map[string]*waitLock),
		done: make(chan struct{})}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// initialMmapSize is the address space bbolt maps at first: 256 MiB.
const initialMmapSize = 256 << 20

// openDB is bolt.Open, turning a panic on a damaged file into an error.
func openDB(path string, timeout time.Duration) (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w file: %v", state.ErrDamaged, r)
		}
	}()
	// A large initial mapping (address space, not memory) spares bbolt
	// re-mapping, and copying its nodes, while a first sync writes a big
	// mailbox.
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, InitialMmapSize: initialMmapSize})
}

// init checks the format version of the file, lays out a new file, and
// adds the accounts bucket to a file made before it existed.
func (s *Store) init() error {
	fresh, old, accounts := false, false, false
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		fresh, err = s.checkFormat(tx)
		old = err == nil && !fresh && format(tx) < formatVersion
		accounts = tx.Bucket(bucketAccounts) != nil
		return err
	})
	if err != nil {
		return s.wrap(err)
	}
	if old {
		// Every value of an older format is a value of this one (see
		// formatVersion): only the number changes.
		if err := s.wrap(s.update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyFormat, binary.BigEndian.AppendUint32(nil, formatVersion))
		})); err != nil {
			return err
		}
	}
	if !fresh {
		if accounts {
			return nil
		}
		return s.wrap(s.update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(bucketAccounts)
			return err
		}))
	}
	return s.wrap(s.update(func(tx *bolt.Tx) error {
		// Check again: another Open may not have run in between (the
		// file is locked), but this keeps init correct on its own.
		if fresh, err := s.checkFormat(tx); err != nil || !fresh {
			return err
		}
		if _, err := tx.CreateBucket(bucketAccounts); err != nil {
			return err
		}
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keyFormat, binary.BigEndian.AppendUint32(nil, formatVersion)); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketMailboxes); err != nil {
			return err
		}
		_, err = tx.CreateBucket(bucketClients)
		return err
	}))
}

// checkFormat reports whether the file is empty, and fails if it is neither
// empty nor a state file of formatVersion.
func (s *Store) checkFormat(tx *bolt.Tx) (fresh bool, err error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if k, _ := tx.Cursor().First(); k != nil {
			return false, errors.New("not a popbridge state file (no format version)")
		}
		return true, nil
	}
	v := meta.Get(keyFormat)
	if len(v) != 4 {
		return false, fmt.Errorf("format version is missing or malformed (%d bytes)", len(v))
	}
	if f := binary.BigEndian.Uint32(v); f < oldestFormat || f > formatVersion {
		return false, fmt.Errorf("format version %d; this popbridge reads versions %d to %d", f, oldestFormat, formatVersion)
	}
	if tx.Bucket(bucketMailboxes) == nil || tx.Bucket(bucketClients) == nil {
		return false, s.corrupt("top-level buckets missing")
	}
	return false, nil
}

// format returns the format version of an initialised file.
func format(tx *bolt.Tx) uint32 {
	return binary.BigEndian.Uint32(tx.Bucket(bucketMeta).Get(keyFormat))
}

// view and update run a bbolt transaction. bbolt can panic on a damaged
// page; that becomes an error (the transaction is rolled back by bbolt on
// the way out) rather than the end of the process.
func (s *Store) view(fn func(*bolt.Tx) error) (err error) {
	defer s.recoverDamage(&err)
	return s.db.View(fn)
}

func (s *Store) update(fn func(*bolt.Tx) error) (err error) {
	defer s.recoverDamage(&err)
	return s.db.Update(fn)
}

func (s *Store) recoverDamage(err *error) {
	if r := recover(); r != nil {
		*err = s.corrupt("%v", r)
	}
}

// corrupt reports damaged data (state.ErrDamaged).
func (s *Store) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", state.ErrDamaged, fmt.Sprintf(format, args...))
}

// wrap prefixes an error from a transaction with the package and the path.
// state.ErrConflict is returned as it is. bbolt's errors for a broken
// file are marked state.ErrDamaged.
func (s *Store) wrap(err error) error {
	if err == nil || err == state.ErrConflict {
		return err
	}
	if !errors.Is(err, state.ErrDamaged) && (errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrChecksum) || errors.Is(err, bolterrors.ErrInvalidMapping) || errors.Is(err, bolterrors.ErrVersionMismatch)) {
		err = fmt.Errorf("%w: %w", state.ErrDamaged, err)
	}
	return fmt.Errorf("boltstore: %s: %w", s.path, err)
}

// loadMeta reads the "meta" value of a mailbox bucket.
func (s *Store) loadMeta(mb *bolt.Bucket, mailbox string) (mailboxMeta, error) {
	meta, err := decodeMailboxMeta(mb.Get(keyMailboxMeta))
	if err != nil {
		return meta, s.corrupt("mailbox %q: %v", mailbox, err)
	}
	return meta, nil
}

// minEntryLen is the fewest bytes an entry takes in the file: its page
// element header, key and value. It bounds how many entries a file can hold.
const minEntryLen = 16 + 4 + 3

// LoadMailbox returns the record of mailbox, or a zero Mailbox when there is
// none.
func (s *Store) LoadMailbox(ctx context.Context, mailbox string) (*state.Mailbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := &state.Mailbox{}
	err := s.view(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMailboxes).Bucket(mailboxKey(mailbox))
		if mb == nil {
			return nil
		}
		meta, err := s.loadMeta(mb, mailbox)
		if err != nil {
			return err
		}
		uids := mb.Bucket(bucketUID)
		if uids == nil {
			return s.corrupt("mailbox %q: no uid bucket", mailbox)
		}
		// The count sizes the slice; a damaged count must not make it
		// larger than the file can hold.
		entries := make([]state.Entry, 0, min(int64(meta.count), tx.Size()/minEntryLen))
		c := uids.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 4 || v == nil {
				return s.corrupt("mailbox %q: bad key %x in uid bucket", mailbox, k)
			}
			uid := binary.BigEndian.Uint32(k)
			e, err := decodeEntry(uid, v)
			if err != nil {
				return s.corrupt("mailbox %q: UID %d: %v", mailbox, uid, err)
			}
			entries = append(entries, e)
		}
		m.Version = meta.version
		m.Markers = meta.markers
		m.Entries = entries
		return nil
	})
	if err != nil {
		return nil, s.wrap(err)
	}
	return m, nil
}

// uidFillPercent packs pages of the uid buckets tighter than bbolt's default
// of one half: new UIDs are larger than the old ones, so inserts go to the
// end and pages seldom split again.
const uidFillPercent = 0.9

func compareUID(a, b state.Entry) int { return cmp.Compare(a.UID, b.UID) }

// ApplyMailbox applies ch to the record of mailbox if its version is still
// base, in one transaction, and returns the new version; otherwise it
// returns state.ErrConflict.
func (s *Store) ApplyMailbox(ctx context.Context, mailbox string, base uint64, ch state.MailboxChange) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// bbolt inserts keys in order fastest. A stable sort keeps the last of
	// two entries with the same UID last, so it still wins.
	put := ch.Put
	if !slices.IsSortedFunc(put, compareUID) {
		put = slices.Clone(put)
		slices.SortStableFunc(put, compareUID)
	}
	var version uint64
	err := s.update(func(tx *bolt.Tx) error {
		mbs := tx.Bucket(bucketMailboxes)
		key := mailboxKey(mailbox)
		mb := mbs.Bucket(key)
		var meta mailboxMeta
		if mb != nil {
			var err error
			if meta, err = s.loadMeta(mb, mailbox); err != nil {
				return err
			}
		}
		if meta.version != base {
			return state.ErrConflict
		}
		if mb == nil {
			if len(key) > bolt.MaxKeySize {
				return fmt.Errorf("mailbox name of %d bytes is too long", len(mailbox))
			}
			var err error
			if mb, err = mbs.CreateBucket(key); err != nil {
				return fmt.Errorf("mailbox %q: %w", mailbox, err)
			}
		}
		uids := mb.Bucket(bucketUID)
		if ch.Reset && uids != nil {
			if err := mb.DeleteBucket(bucketUID); err != nil {
				return err
			}
			uids = nil
			meta.count = 0
		}
		if uids == nil {
			var err error
			if uids, err = mb.CreateBucket(bucketUID); err != nil {
				return err
			}
		}
		uids.FillPercent = uidFillPercent

		c := uids.Cursor()
		for _, uid := range ch.Delete {
			k := uidKey(uid)
			if found, _ := c.Seek(k[:]); bytes.Equal(found, k[:]) {
				if err := c.Delete(); err != nil {
					return err
				}
				meta.count--
			}
		}

		// bbolt keeps the values until the commit, so each needs bytes of
		// its own: carve them out of buffers of up to 64 KiB.
		left := 0 // bytes the values not written yet may take
		for i := range put {
			left += maxEntryLen(&put[i])
		}
		var buf []byte
		for i := range put {
			e := &put[i]
			k := uidKey(e.UID)
			if uids.Get(k[:]) == nil {
				meta.count++
			}
			n := maxEntryLen(e)
			if cap(buf)-len(buf) < n {
				buf = make([]byte, 0, max(n, min(left, 64<<10)))
			}
			left -= n
			v := appendEntry(buf[len(buf):len(buf)], e)
			buf = buf[:len(buf)+len(v)]
			if err := uids.Put(k[:], v); err != nil {
				return fmt.Errorf("mailbox %q: UID %d: %w", mailbox, e.UID, err)
			}
		}

		meta.version++
		meta.markers = ch.Markers
		version = meta.version
		return mb.Put(keyMailboxMeta, meta.encode())
	})
	if err != nil {
		return 0, s.wrap(err)
	}
	return version, nil
}

// LoadClient returns the record of k, or an empty Client when there is none.
// Hidden is never nil.
func (s *Store) LoadClient(ctx context.Context, k state.ClientKey) (*state.Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &state.Client{Hidden: make(map[string]bool)}
	err := s.view(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketClients).Bucket(clientKey(k))
		if cb == nil {
			return nil
		}
		if hidden := cb.Bucket(bucketHidden); hidden != nil {
			cur := hidden.Cursor()
			for uidl, _ := cur.First(); uidl != nil; uidl, _ = cur.Next() {
				c.Hidden[string(uidl)] = true
			}
		}
		if v := cb.Get(keyPending); v != nil {
			p, err := decodePending(v)
			if err != nil {
				return s.corrupt("client %q of mailbox %q: pending: %v", k.Client, k.Mailbox, err)
			}
			c.Pending = p
		}
		if v := cb.Get(keyLastLogin); v != nil {
			t, err := decodeLastLogin(v)
			if err != nil {
				return s.corrupt("client %q of mailbox %q: last login: %v", k.Client, k.Mailbox, err)
			}
			c.LastLogin = t
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap(err)
	}
	return c, nil
}

// ApplyClient applies ch to the record of k in one transaction, creating the
// record if needed and deleting it when it ends up empty (no hidden UIDL,
// no pending UPDATE, no last login). A UIDL to hide
// must not be empty (RFC 1939 UIDLs have 1 to 70 characters).
func (s *Store) ApplyClient(ctx context.Context, k state.ClientKey, ch state.ClientChange) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, uidl := range ch.Hide {
		if uidl == "" {
			return s.wrap(fmt.Errorf("client %q of mailbox %q: cannot hide an empty UIDL", k.Client, k.Mailbox))
		}
	}
	err := s.update(func(tx *bolt.Tx) error {
		clients := tx.Bucket(bucketClients)
		key := clientKey(k)
		cb := clients.Bucket(key)
		if cb == nil {
			if len(ch.Hide) == 0 && ch.SetPending == nil && ch.LastLogin.IsZero() {
				return nil // nothing to remove from a record that does not exist
			}
			if len(key) > bolt.MaxKeySize {
				return fmt.Errorf("mailbox and client names of %d bytes are too long", len(k.Mailbox)+len(k.Client))
			}
			var err error
			if cb, err = clients.CreateBucket(key); err != nil {
				return fmt.Errorf("client %q of mailbox %q: %w", k.Client, k.Mailbox, err)
			}
		}

		hidden := cb.Bucket(bucketHidden)
		if hidden != nil {
			for _, uidl := range ch.Unhide {
				if err := hidden.Delete([]byte(uidl)); err != nil {
					return err
				}
			}
		}
		if len(ch.Hide) > 0 && hidden == nil {
			var err error
			if hidden, err = cb.CreateBucket(bucketHidden); err != nil {
				return err
			}
		}
		for _, uidl := range ch.Hide {
			if err := hidden.Put([]byte(uidl), nil); err != nil {
				return fmt.Errorf("client %q of mailbox %q: hide %q: %w", k.Client, k.Mailbox, uidl, err)
			}
		}

		if ch.ClearPending {
			if err := cb.Delete(keyPending); err != nil {
				return err
			}
		}
		if ch.SetPending != nil {
			if err := cb.Put(keyPending, encodePending(ch.SetPending)); err != nil {
				return err
			}
		}

		if !ch.LastLogin.IsZero() {
			if err := cb.Put(keyLastLogin, encodeLastLogin(ch.LastLogin)); err != nil {
				return err
			}
		}

		// Drop a record left empty.
		if cb.Get(keyPending) != nil || cb.Get(keyLastLogin) != nil {
			return nil
		}
		if hidden != nil {
			if first, _ := hidden.Cursor().First(); first != nil {
				return nil
			}
		}
		return clients.DeleteBucket(key)
	})
	return s.wrap(err)
}

// Lock takes the maildrop lock of k, or returns state.ErrLocked at once when
// a session of this Store holds it. The locks live in the Store: no other
// process can open the file while it is open.
func (s *Store) Lock(ctx context.Context, k state.ClientKey) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, s.wrap(errClosed)
	}
	if _, held := s.locks[k]; held {
		return nil, state.ErrLocked
	}
	s.locks[k] = struct{}{}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.locks, k) // a no-op after Close, which empties locks
			s.mu.Unlock()
		})
	}, nil
}

// LockUpdate takes the update lock of mailbox, waiting while another
// session of this Store holds it, until ctx ends or the Store is closed.
func (s *Store) LockUpdate(ctx context.Context, mailbox string) (release func(), err error) {
	release, err = s.waitLock(ctx, "update\x00"+mailbox)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("boltstore: waiting for the update lock of %q: %w", mailbox, err)
	}
	return release, err
}

// waitLock takes the lock named key, waiting until it is free, ctx ends or
// the Store is closed. release frees it and may be called more than once.
func (s *Store) waitLock(ctx context.Context, key string) (release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, s.wrap(errClosed)
	}
	l := s.waits[key]
	if l == nil {
		l = &waitLock{slot: make(chan struct{}, 1)}
		s.waits[key] = l
	}
	l.refs++
	s.mu.Unlock()
	drop := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if l.refs--; l.refs == 0 && s.waits[key] == l {
			delete(s.waits, key)
		}
	}
	select {
	case l.slot <- struct{}{}:
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	case <-s.done:
		drop()
		return nil, s.wrap(errClosed)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-l.slot
			drop()
		})
	}, nil
}

// RenameMailbox implements state.Store.RenameMailbox.
func (s *Store) RenameMailbox(ctx context.Context, from, to string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if from == to {
		return false, nil
	}
	fromKey, toKey := mailboxKey(from), mailboxKey(to)
	if len(toKey) > bolt.MaxKeySize {
		return false, s.wrap(fmt.Errorf("mailbox name of %d bytes is too long", len(to)))
	}
	renamable := func(tx *bolt.Tx) bool {
		mbs := tx.Bucket(bucketMailboxes)
		if mbs.Bucket(fromKey) == nil || mbs.Bucket(toKey) != nil {
			return false
		}
		// A client key starts with its mailbox's key.
		k, _ := tx.Bucket(bucketClients).Cursor().Seek(toKey)
		return k == nil || !bytes.HasPrefix(k, toKey)
	}
	ok := false
	err := s.view(func(tx *bolt.Tx) error {
		ok = renamable(tx)
		return nil
	})
	if err != nil || !ok {
		return false, s.wrap(err)
	}
	err = s.update(func(tx *bolt.Tx) error {
		if ok = renamable(tx); !ok {
			return nil
		}
		mbs := tx.Bucket(bucketMailboxes)
		if err := moveBucket(mbs, fromKey, toKey); err != nil {
			return err
		}
		clients := tx.Bucket(bucketClients)
		var keys [][]byte
		c := clients.Cursor()
		for k, v := c.Seek(fromKey); k != nil && bytes.HasPrefix(k, fromKey); k, v = c.Next() {
			if v == nil {
				keys = append(keys, bytes.Clone(k))
			}
		}
		for _, k := range keys {
			nk := append(bytes.Clone(toKey), k[len(fromKey):]...)
			if len(nk) > bolt.MaxKeySize {
				return fmt.Errorf("mailbox and client names of %d bytes are too long", len(nk))
			}
			if err := moveBucket(clients, k, nk); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, s.wrap(err)
	}
	return ok, nil
}

// moveBucket gives parent's bucket from the key to, with all it holds.
func moveBucket(parent *bolt.Bucket, from, to []byte) error {
	dst, err := parent.CreateBucket(to)
	if err != nil {
		return err
	}
	if err := copyBucket(dst, parent.Bucket(from)); err != nil {
		return err
	}
	return parent.DeleteBucket(from)
}

// copyBucket copies src's keys, values and nested buckets into dst.
func copyBucket(dst, src *bolt.Bucket) error {
	c := src.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil {
			if err := dst.Put(bytes.Clone(k), bytes.Clone(v)); err != nil {
				return err
			}
			continue
		}
		child, err := dst.CreateBucket(bytes.Clone(k))
		if err != nil {
			return err
		}
		if bytes.Equal(k, bucketUID) {
			child.FillPercent = uidFillPercent
		}
		if err := copyBucket(child, src.Bucket(k)); err != nil {
			return err
		}
	}
	return nil
}

// Ping implements state.Pinger: a read transaction on the file.
func (s *Store) Ping(ctx context.Context) error {
	return s.db.View(func(*bolt.Tx) error { return nil })
}

// Close frees every maildrop lock, makes LockGrant calls that wait fail,
// and closes the file. The Store must not be used
// afterwards, except that release functions may still be called.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		close(s.done) // waiters for grant locks give up
	}
	s.closed = true
	s.locks = nil
	s.mu.Unlock()
	return s.wrap(s.db.Close())
}

// MailboxVersion implements state.Versioner: it reads only the record's
// meta entry.
func (s *Store) MailboxVersion(ctx context.Context, mailbox string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var v uint64
	err := s.view(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMailboxes).Bucket(mailboxKey(mailbox))
		if mb == nil {
			return nil
		}
		meta, err := s.loadMeta(mb, mailbox)
		v = meta.version
		return err
	})
	if err != nil {
		return 0, s.wrap(err)
	}
	return v, nil
}
