package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/popbridge/popbridge/state"
)

var _ state.Exporter = (*Store)(nil)

// readString reads one appendString value from b and returns it and the
// rest of b.
func readString(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return "", nil, errors.New("bad length")
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

// ForEachMailbox implements state.Exporter, in the order of the keys of
// the file (by the length of the name, then its bytes).
func (s *Store) ForEachMailbox(ctx context.Context, fn func(name string, version uint64, mk state.Markers) error) error {
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketMailboxes).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			name, rest, err := readString(k)
			if err != nil || len(rest) != 0 || v != nil {
				return s.corrupt("mailboxes: bad key %x", k)
			}
			meta, err := s.loadMeta(tx.Bucket(bucketMailboxes).Bucket(k), name)
			if err != nil {
				return err
			}
			if err := fn(name, meta.version, meta.markers); err != nil {
				return err
			}
		}
		return nil
	})
	return s.wrap(err)
}

// ForEachEntry implements state.Exporter.
func (s *Store) ForEachEntry(ctx context.Context, mailbox string, fn func(state.Entry) error) error {
	err := s.view(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMailboxes).Bucket(mailboxKey(mailbox))
		if mb == nil {
			return nil
		}
		uids := mb.Bucket(bucketUID)
		if uids == nil {
			return s.corrupt("mailbox %q: no uid bucket", mailbox)
		}
		c := uids.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(k) != 4 || v == nil {
				return s.corrupt("mailbox %q: bad key %x in uid bucket", mailbox, k)
			}
			uid := binary.BigEndian.Uint32(k)
			e, err := decodeEntry(uid, v)
			if err != nil {
				return s.corrupt("mailbox %q: UID %d: %v", mailbox, uid, err)
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	})
	return s.wrap(err)
}

// ForEachClient implements state.Exporter, in the order of the keys of the
// file (grouped by mailbox).
func (s *Store) ForEachClient(ctx context.Context, fn func(k state.ClientKey, p *state.Pending, lastLogin time.Time) error) error {
	err := s.view(func(tx *bolt.Tx) error {
		clients := tx.Bucket(bucketClients)
		c := clients.Cursor()
		for key, v := c.First(); key != nil; key, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			mbox, rest, err := readString(key)
			var client string
			if err == nil {
				client, rest, err = readString(rest)
			}
			if err != nil || len(rest) != 0 || v != nil {
				return s.corrupt("clients: bad key %x", key)
			}
			var p *state.Pending
			if pv := clients.Bucket(key).Get(keyPending); pv != nil {
				if p, err = decodePending(pv); err != nil {
					return s.corrupt("client %q of mailbox %q: pending: %v", client, mbox, err)
				}
			}
			var last time.Time
			if lv := clients.Bucket(key).Get(keyLastLogin); lv != nil {
				if last, err = decodeLastLogin(lv); err != nil {
					return s.corrupt("client %q of mailbox %q: last login: %v", client, mbox, err)
				}
			}
			if err := fn(state.ClientKey{Mailbox: mbox, Client: client}, p, last); err != nil {
				return err
			}
		}
		return nil
	})
	return s.wrap(err)
}

// ForEachHidden implements state.Exporter.
func (s *Store) ForEachHidden(ctx context.Context, k state.ClientKey, fn func(uidl string) error) error {
	err := s.view(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketClients).Bucket(clientKey(k))
		if cb == nil {
			return nil
		}
		hidden := cb.Bucket(bucketHidden)
		if hidden == nil {
			return nil
		}
		c := hidden.Cursor()
		for uidl, _ := c.First(); uidl != nil; uidl, _ = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(string(uidl)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.wrap(fmt.Errorf("client %q of mailbox %q: %w", k.Client, k.Mailbox, err))
	}
	return nil
}
