package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/popbridge/popbridge/state/storetest"
)

func mustOpen(t testing.TB, dsn string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	pgtest.DSN(t)
	storetest.Run(t, func(t *testing.T) func() state.Store {
		dsn := pgtest.Schema(t)
		return func() state.Store {
			s, err := Open(t.Context(), dsn, nil)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}, &storetest.Options{Shared: true})
}

func TestOpenConcurrently(t *testing.T) {
	dsn := pgtest.Schema(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := Open(t.Context(), dsn, nil)
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
}

func TestNewerSchema(t *testing.T) {
	dsn := pgtest.Schema(t)
	mustOpen(t, dsn).Close()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	if _, err := conn.Exec(t.Context(), `UPDATE popbridge_schema SET version = 99`); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(t.Context(), dsn, nil); err == nil {
		s.Close()
		t.Fatal("Open of a database migrated by a newer popbridge succeeded")
	} else if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open: %v", err)
	}
}

func TestMaxLocks(t *testing.T) {
	s, err := Open(t.Context(), pgtest.Schema(t), &Options{MaxLocks: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	r1, err := s.Lock(ctx, state.ClientKey{Mailbox: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lock(ctx, state.ClientKey{Mailbox: "a"}); !errors.Is(err, state.ErrLocked) {
		t.Fatalf("Lock of a held lock: %v", err)
	}
	r2, err := s.Lock(ctx, state.ClientKey{Mailbox: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lock(ctx, state.ClientKey{Mailbox: "c"}); err == nil || errors.Is(err, state.ErrLocked) {
		t.Fatalf("third Lock with MaxLocks 2: %v, want a capacity error", err)
	}
	r1()
	r3, err := s.Lock(ctx, state.ClientKey{Mailbox: "c"})
	if err != nil {
		t.Fatal(err)
	}
	r2()
	r3()
}

func TestDamagedRows(t *testing.T) {
	dsn := pgtest.Schema(t)
	s := mustOpen(t, dsn)
	ctx := t.Context()
	if _, err := s.ApplyMailbox(ctx, "INBOX", 0, state.MailboxChange{Put: []state.Entry{{UID: 1, UIDL: "u1"}}}); err != nil {
		t.Fatal(err)
	}
	k := state.ClientKey{Mailbox: "INBOX"}
	if err := s.ApplyClient(ctx, k, state.ClientChange{SetPending: &state.Pending{Policy: "hide"}}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{
		`UPDATE popbridge_entry SET uid = -1`,
		`UPDATE popbridge_mailbox SET uid_next = 1099511627776`,
		`UPDATE popbridge_client SET pending = '{"uids": [-5]}'`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := s.LoadMailbox(ctx, "INBOX"); err == nil {
		t.Errorf("LoadMailbox of damaged rows = %+v, no error", m)
	} else {
		t.Log(err)
	}
	if c, err := s.LoadClient(ctx, k); err == nil {
		t.Errorf("LoadClient of damaged rows = %+v, no error", c)
	} else {
		t.Log(err)
	}
}

func BenchmarkLoadMailbox100k(b *testing.B) {
	s := mustOpen(b, pgtest.Schema(b))
	ctx := context.Background()
	const n = 100_000
	put := make([]state.Entry, n)
	for i := range put {
		uid := uint32(i + 1)
		put[i] = state.Entry{UID: uid, UIDL: fmt.Sprintf("%08x6b076fcb", uid), Size: int64(2000 + i), Fingerprint: fmt.Sprintf("<%08x.%d@mail.example.org> 2026-03-01T12:00:00Z %d", i*7919, i, 2000+i)}
	}
	if _, err := s.ApplyMailbox(ctx, "INBOX", 0, state.MailboxChange{Put: put}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m, err := s.LoadMailbox(ctx, "INBOX")
		if err != nil || len(m.Entries) != n {
			b.Fatalf("%d entries, %v", len(m.Entries), err)
		}
	}
}

// BenchmarkLoginWrite is the client record write of a login: "last_login"
// sets only the last login (one upsert, no transaction), "with_unhide" adds
// a stale hidden UIDL to prune (the transaction of every other change).
func BenchmarkLoginWrite(b *testing.B) {
	s := mustOpen(b, pgtest.Schema(b))
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	now := time.Date(2026, 12, 3, 13, 0, 0, 0, time.UTC)
	b.Run("last_login", func(b *testing.B) {
		for b.Loop() {
			now = now.Add(time.Second)
			if err := s.ApplyClient(b.Context(), k, state.ClientChange{LastLogin: now}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("with_unhide", func(b *testing.B) {
		for b.Loop() {
			now = now.Add(time.Second)
			if err := s.ApplyClient(b.Context(), k, state.ClientChange{LastLogin: now, Unhide: []string{"gone"}}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
