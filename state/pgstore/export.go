package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/popbridge/popbridge/state"
)

var _ state.Exporter = (*Store)(nil)

// ForEachMailbox implements state.Exporter, by name. The rows stream from
// the server as fn takes them.
func (s *Store) ForEachMailbox(ctx context.Context, fn func(name string, version uint64, mk state.Markers) error) error {
	rows, err := s.pool.Query(ctx, `SELECT name, version, uid_validity, uid_next, num_messages, highest_modseq FROM popbridge_mailbox ORDER BY name`)
	if err != nil {
		return fmt.Errorf("pgstore: mailboxes: %w", classify(err))
	}
	var (
		name                                 string
		version, validity, next, num, modseq int64
	)
	_, err = pgx.ForEachRow(rows, []any{&name, &version, &validity, &next, &num, &modseq}, func() error {
		var bad []string
		mk := state.Markers{UIDValidity: u32(validity, "uid_validity", &bad), UIDNext: u32(next, "uid_next", &bad),
			NumMessages: u32(num, "num_messages", &bad), HighestModSeq: uint64(modseq)}
		if bad != nil {
			return fmt.Errorf("mailbox %q: %v out of range: %w", name, bad, state.ErrDamaged)
		}
		return fn(name, uint64(version), mk)
	})
	if err != nil {
		return fmt.Errorf("pgstore: mailboxes: %w", classify(err))
	}
	return nil
}

// ForEachEntry implements state.Exporter.
func (s *Store) ForEachEntry(ctx context.Context, mailbox string, fn func(state.Entry) error) error {
	rows, err := s.pool.Query(ctx, `SELECT uid, uidl, size, fingerprint, digest FROM popbridge_entry WHERE mailbox = $1 ORDER BY uid`, mailbox)
	if err != nil {
		return fmt.Errorf("pgstore: entries of %q: %w", mailbox, classify(err))
	}
	var (
		uid int64
		e   state.Entry
	)
	_, err = pgx.ForEachRow(rows, []any{&uid, &e.UIDL, &e.Size, &e.Fingerprint, &e.Digest}, func() error {
		var bad []string
		if e.UID = u32(uid, "uid", &bad); bad != nil {
			return fmt.Errorf("UID %d out of range: %w", uid, state.ErrDamaged)
		}
		return fn(e)
	})
	if err != nil {
		return fmt.Errorf("pgstore: entries of %q: %w", mailbox, classify(err))
	}
	return nil
}

// ForEachClient implements state.Exporter, by mailbox and client.
func (s *Store) ForEachClient(ctx context.Context, fn func(k state.ClientKey, p *state.Pending, lastLogin time.Time) error) error {
	rows, err := s.pool.Query(ctx, `SELECT mailbox, client, pending, last_login FROM popbridge_client ORDER BY mailbox, client`)
	if err != nil {
		return fmt.Errorf("pgstore: clients: %w", classify(err))
	}
	var (
		k       state.ClientKey
		pending []byte
		last    *time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&k.Mailbox, &k.Client, &pending, &last}, func() error {
		var p *state.Pending
		if pending != nil {
			var pj pendingJSON
			if err := json.Unmarshal(pending, &pj); err != nil {
				return fmt.Errorf("client %q of mailbox %q: pending: %w", k.Client, k.Mailbox, err)
			}
			p = &state.Pending{
				Policy: pj.Policy, Target: pj.Target, Flags: pj.Flags,
				UIDValidity: pj.UIDValidity, UIDs: pj.UIDs, UIDLs: pj.UIDLs,
				Fingerprints: pj.Fingerprints, Digests: pj.Digests,
				Created: pj.Created.UTC(), Attempts: pj.Attempts, Copied: pj.Copied,
			}
		}
		var lastLogin time.Time
		if last != nil {
			lastLogin = last.UTC()
		}
		return fn(k, p, lastLogin)
	})
	if err != nil {
		return fmt.Errorf("pgstore: clients: %w", classify(err))
	}
	return nil
}

// ForEachHidden implements state.Exporter.
func (s *Store) ForEachHidden(ctx context.Context, k state.ClientKey, fn func(uidl string) error) error {
	rows, err := s.pool.Query(ctx, `SELECT uidl FROM popbridge_hidden WHERE mailbox = $1 AND client = $2 ORDER BY uidl`, k.Mailbox, k.Client)
	if err != nil {
		return fmt.Errorf("pgstore: hidden UIDLs of client %q of mailbox %q: %w", k.Client, k.Mailbox, classify(err))
	}
	var uidl string
	_, err = pgx.ForEachRow(rows, []any{&uidl}, func() error { return fn(uidl) })
	if err != nil {
		return fmt.Errorf("pgstore: hidden UIDLs of client %q of mailbox %q: %w", k.Client, k.Mailbox, classify(err))
	}
	return nil
}
