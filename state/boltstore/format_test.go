package boltstore

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/popbridge/popbridge/state"
)

// TestReadsFormat1 opens a file laid out by format 1 (written here byte by
// byte, as the documentation of format 1 describes it): its records load
// unchanged, with no Digest, no identities and no Attempts; the file is
// marked format 2; and the new fields are stored from then on.
func TestReadsFormat1(t *testing.T) {
	path := tempPath(t)
	const mb = "INBOX"
	k := state.ClientKey{Mailbox: mb, Client: "laptop"}
	str := func(b []byte, s string) []byte { return append(binary.AppendUvarint(b, uint64(len(s))), s...) }
	created := time.Date(2026, 11, 1, 10, 0, 0, 42, time.UTC)
	writeRaw(t, path, func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keyFormat, binary.BigEndian.AppendUint32(nil, 1)); err != nil {
			return err
		}
		mbs, err := tx.CreateBucket(bucketMailboxes)
		if err != nil {
			return err
		}
		box, err := mbs.CreateBucket(str(nil, mb))
		if err != nil {
			return err
		}
		var m []byte
		m = binary.BigEndian.AppendUint64(m, 3)  // version
		m = binary.BigEndian.AppendUint32(m, 77) // UIDVALIDITY
		m = binary.BigEndian.AppendUint32(m, 3)  // UIDNEXT
		m = binary.BigEndian.AppendUint32(m, 2)  // messages
		m = binary.BigEndian.AppendUint64(m, 0)  // HIGHESTMODSEQ
		m = binary.BigEndian.AppendUint32(m, 2)  // entries
		if err := box.Put(keyMailboxMeta, m); err != nil {
			return err
		}
		uids, err := box.CreateBucket(bucketUID)
		if err != nil {
			return err
		}
		for uid := uint32(1); uid <= 2; uid++ {
			k := uidKey(uid)
			v := str(str(binary.AppendVarint(nil, int64(100*uid)), "uidl"+string(rune('0'+uid))), "h:tie")
			if err := uids.Put(k[:], v); err != nil {
				return err
			}
		}
		clients, err := tx.CreateBucket(bucketClients)
		if err != nil {
			return err
		}
		cb, err := clients.CreateBucket(str(str(nil, k.Mailbox), k.Client))
		if err != nil {
			return err
		}
		p := str(str(nil, "expunge"), "")
		p = binary.AppendUvarint(p, 0) // flags
		p = binary.BigEndian.AppendUint32(p, 77)
		p = binary.AppendUvarint(binary.AppendUvarint(p, 1), 2)
		p = str(binary.AppendUvarint(p, 1), "uidl2")
		p = binary.AppendVarint(p, created.Unix())
		p = binary.AppendUvarint(p, uint64(created.Nanosecond()))
		return cb.Put(keyPending, p)
	})

	s := mustOpen(t, path)
	ctx := t.Context()
	m, err := s.LoadMailbox(ctx, mb)
	if err != nil {
		t.Fatal(err)
	}
	want := []state.Entry{{UID: 1, UIDL: "uidl1", Size: 100, Fingerprint: "h:tie"}, {UID: 2, UIDL: "uidl2", Size: 200, Fingerprint: "h:tie"}}
	if m.Version != 3 || m.UIDValidity != 77 || !slices.Equal(m.Entries, want) {
		t.Errorf("format-1 mailbox loaded as %+v", m)
	}
	c, err := s.LoadClient(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Pending; p == nil || p.Policy != "expunge" || !slices.Equal(p.UIDs, []uint32{2}) || !slices.Equal(p.UIDLs, []string{"uidl2"}) ||
		!p.Created.Equal(created) || p.Attempts != 0 || p.Fingerprints != nil || p.Digests != nil {
		t.Errorf("format-1 pending loaded as %+v", c.Pending)
	}
	if !c.LastLogin.IsZero() {
		t.Errorf("a client record without a last login loaded with LastLogin %v", c.LastLogin)
	}

	// New fields are stored from now on.
	put := []state.Entry{{UID: 1, UIDL: "uidl1", Size: 100, Fingerprint: "h:tie", Digest: "s:one"}}
	if _, err := s.ApplyMailbox(ctx, mb, 3, state.MailboxChange{Markers: m.Markers, Put: put}); err != nil {
		t.Fatal(err)
	}
	np := &state.Pending{Policy: "expunge", UIDValidity: 77, UIDs: []uint32{1}, UIDLs: []string{"uidl1"},
		Fingerprints: []string{"h:tie"}, Digests: []string{"s:one"}, Created: created, Attempts: 4}
	if err := s.ApplyClient(ctx, k, state.ClientChange{SetPending: np}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, path)
	var f uint32
	if err := s.view(func(tx *bolt.Tx) error { f = format(tx); return nil }); err != nil || f != formatVersion {
		t.Errorf("format after opening a format-1 file = %d, %v; want %d", f, err, formatVersion)
	}
	if m, err = s.LoadMailbox(ctx, mb); err != nil || m.Entries[0].Digest != "s:one" || m.Entries[1].Digest != "" {
		t.Errorf("after storing a digest: %+v, %v", m, err)
	}
	if c, err = s.LoadClient(ctx, k); err != nil || c.Pending.Attempts != 4 || !slices.Equal(c.Pending.Digests, []string{"s:one"}) ||
		!slices.Equal(c.Pending.Fingerprints, []string{"h:tie"}) {
		t.Errorf("after storing a pending UPDATE with identities: %+v, %v", c.Pending, err)
	}

	// A last login is an optional value of the client bucket: storing one
	// keeps the file at format 2, which earlier builds of format 2 read
	// (they do not look at it).
	last := time.Date(2026, 12, 3, 13, 0, 0, 1234567, time.UTC)
	if err := s.ApplyClient(ctx, k, state.ClientChange{LastLogin: last}); err != nil {
		t.Fatal(err)
	}
	if c, err = s.LoadClient(ctx, k); err != nil || !c.LastLogin.Equal(last.Truncate(time.Microsecond)) || c.Pending == nil {
		t.Errorf("after storing a last login: %+v, %v", c, err)
	}
	if err := s.view(func(tx *bolt.Tx) error { f = format(tx); return nil }); err != nil || f != 2 {
		t.Errorf("format after storing a last login = %d, %v; want 2", f, err)
	}
}
