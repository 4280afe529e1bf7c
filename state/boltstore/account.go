package boltstore

import (
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/popbridge/popbridge/state"
)

var _ state.AccountStore = (*Store)(nil)

// checkName refuses names bbolt cannot take as keys.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty account name")
	}
	if len(name) > bolt.MaxKeySize {
		return fmt.Errorf("account name of %d bytes is too long", len(name))
	}
	return nil
}

// LoadAccount returns the record of name, or state.ErrNotFound.
func (s *Store) LoadAccount(ctx context.Context, name string) (*state.Account, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if name == "" || len(name) > bolt.MaxKeySize {
		return nil, state.ErrNotFound
	}
	var a *state.Account
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAccounts).Get([]byte(name))
		if v == nil {
			return state.ErrNotFound
		}
		var err error
		if a, err = decodeAccount(name, v); err != nil {
			return s.corrupt("account %q: %v", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap(err)
	}
	return a, nil
}

// ListAccounts returns every account record, ordered by the bytes of the
// name.
func (s *Store) ListAccounts(ctx context.Context) ([]*state.Account, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var list []*state.Account
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAccounts).ForEach(func(k, v []byte) error {
			a, err := decodeAccount(string(k), v)
			if err != nil {
				return s.corrupt("account %q: %v", k, err)
			}
			list = append(list, a)
			return nil
		})
	})
	if err != nil {
		return nil, s.wrap(err)
	}
	return list, nil
}

// PutAccount stores a in one transaction if the stored version is still
// a.Version, and returns the new version; otherwise it returns
// state.ErrConflict.
func (s *Store) PutAccount(ctx context.Context, a *state.Account) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkName(a.Name); err != nil {
		return 0, s.wrap(err)
	}
	v := encodeAccount(a, a.Version+1)
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccounts)
		var stored uint64
		if cur := b.Get([]byte(a.Name)); cur != nil {
			var err error
			if stored, err = accountVersion(cur); err != nil {
				return s.corrupt("account %q: %v", a.Name, err)
			}
		}
		if stored != a.Version {
			return state.ErrConflict
		}
		return b.Put([]byte(a.Name), v)
	})
	if err != nil {
		return 0, s.wrap(err)
	}
	return a.Version + 1, nil
}

// DeleteAccount removes the record of name, or returns state.ErrNotFound.
func (s *Store) DeleteAccount(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if name == "" || len(name) > bolt.MaxKeySize {
		return state.ErrNotFound
	}
	return s.wrap(s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccounts)
		if b.Get([]byte(name)) == nil {
			return state.ErrNotFound
		}
		return b.Delete([]byte(name))
	}))
}

// LockGrant takes the grant lock of name, waiting until it is free, ctx
// ends or the Store is closed. The locks live in the Store: no other process
// can open the file while it is open.
func (s *Store) LockGrant(ctx context.Context, name string) (release func(), err error) {
	return s.waitLock(ctx, "grant\x00"+name)
}
