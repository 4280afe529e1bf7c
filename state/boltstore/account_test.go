package boltstore

import (
	"errors"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/popbridge/popbridge/state"
)

// TestAccountsBucketAdded opens a state file made before accounts existed
// (no "accounts" bucket): Open adds the bucket and keeps the records.
func TestAccountsBucketAdded(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	if _, err := s.ApplyMailbox(t.Context(), "INBOX", 0, state.MailboxChange{Put: []state.Entry{{UID: 1, UIDL: "u1"}}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	writeRaw(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAccounts) })

	s = mustOpen(t, path)
	if m, err := s.LoadMailbox(t.Context(), "INBOX"); err != nil || len(m.Entries) != 1 {
		t.Fatalf("LoadMailbox after the upgrade: %+v, %v", m, err)
	}
	if _, err := s.LoadAccount(t.Context(), "alice"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("LoadAccount: %v, want ErrNotFound", err)
	}
	if _, err := s.PutAccount(t.Context(), &state.Account{Name: "alice"}); err != nil {
		t.Fatalf("PutAccount: %v", err)
	}
}

// TestDamagedAccounts damages stored account values and checks that
// loading, listing and storing them is an error naming the account, never a
// panic or a silent overwrite.
func TestDamagedAccounts(t *testing.T) {
	good := encodeAccount(&state.Account{Name: "alice", Kind: "delegated", Passwords: []state.AppPassword{{Label: "a", Hash: "h", WrappedDEK: []byte{1, 2}}}}, 1)
	for name, v := range map[string][]byte{
		"empty":         {},
		"other layout":  append([]byte{2}, good[1:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte(nil), good...), 0),
		"huge count":    append(append([]byte(nil), good[:16]...), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"version 0":     append([]byte{1, 0}, good[2:]...),
		"bad time flag": func() []byte { b := append([]byte(nil), good...); b[len(b)-1] = 7; return b }(),
	} {
		t.Run(name, func(t *testing.T) {
			path := tempPath(t)
			mustOpen(t, path).Close()
			writeRaw(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketAccounts).Put([]byte("alice"), v) })
			s := mustOpen(t, path)
			if a, err := s.LoadAccount(t.Context(), "alice"); err == nil || !strings.Contains(err.Error(), `"alice"`) {
				t.Errorf("LoadAccount = %+v, %v; want an error naming the account", a, err)
			}
			if list, err := s.ListAccounts(t.Context()); err == nil {
				t.Errorf("ListAccounts = %d records, no error", len(list))
			}
			if name == "version 0" || name == "truncated" || name == "trailing" || name == "bad time flag" || name == "huge count" {
				return // the version is readable: PutAccount goes by it
			}
			if _, err := s.PutAccount(t.Context(), &state.Account{Name: "alice", Version: 1}); err == nil || errors.Is(err, state.ErrConflict) {
				t.Errorf("PutAccount over a value of unknown layout: %v, want a damage error", err)
			}
		})
	}
	// The good value decodes, and its password count is where the damage
	// above put a huge one.
	if good[16] != 1 {
		t.Fatalf("password count of the good value is at %d, not 16", good[16])
	}
	if a, err := decodeAccount("alice", good); err != nil || a.Passwords[0].Label != "a" {
		t.Fatalf("decodeAccount(good) = %+v, %v", a, err)
	}
}
