package pgstore

import (
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
)

// TestReadsSchema1 fills a database at schema 1, as a popbridge without
// digests left it, and opens it: Open migrates it, the old rows load with
// no Digest and a pending UPDATE without the fields added later, and the
// new fields are stored from then on.
func TestReadsSchema1(t *testing.T) {
	dsn := pgtest.Schema(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	init1, err := migrationFS.ReadFile("migrations/001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		string(init1),
		`CREATE TABLE popbridge_schema (version integer NOT NULL)`,
		`INSERT INTO popbridge_schema (version) VALUES (1)`,
		`INSERT INTO popbridge_mailbox VALUES ('INBOX', 3, 77, 3, 2, 0)`,
		`INSERT INTO popbridge_entry VALUES ('INBOX', 1, 'uidl1', 100, 'h:tie'), ('INBOX', 2, 'uidl2', 200, 'h:tie')`,
		`INSERT INTO popbridge_client VALUES ('INBOX', 'laptop', '{"policy":"expunge","uidvalidity":77,"uids":[2],"uidls":["uidl2"],"created":"2026-11-01T10:00:00.000000042Z"}')`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	s := mustOpen(t, dsn)
	m, err := s.LoadMailbox(ctx, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	want := []state.Entry{{UID: 1, UIDL: "uidl1", Size: 100, Fingerprint: "h:tie"}, {UID: 2, UIDL: "uidl2", Size: 200, Fingerprint: "h:tie"}}
	if m.Version != 3 || !slices.Equal(m.Entries, want) {
		t.Errorf("schema-1 mailbox loaded as %+v", m)
	}
	k := state.ClientKey{Mailbox: "INBOX", Client: "laptop"}
	c, err := s.LoadClient(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 11, 1, 10, 0, 0, 42, time.UTC)
	if p := c.Pending; p == nil || p.Policy != "expunge" || !slices.Equal(p.UIDLs, []string{"uidl2"}) || !p.Created.Equal(created) ||
		p.Attempts != 0 || p.Fingerprints != nil || p.Digests != nil {
		t.Errorf("schema-1 pending loaded as %+v", c.Pending)
	}
	if !c.LastLogin.IsZero() {
		t.Errorf("a schema-1 client row loaded with LastLogin %v", c.LastLogin)
	}

	put := []state.Entry{{UID: 2, UIDL: "uidl2", Size: 200, Fingerprint: "h:tie", Digest: "s:two"}}
	if _, err := s.ApplyMailbox(ctx, "INBOX", 3, state.MailboxChange{Markers: m.Markers, Put: put}); err != nil {
		t.Fatal(err)
	}
	if m, err = s.LoadMailbox(ctx, "INBOX"); err != nil || m.Entries[0].Digest != "" || m.Entries[1].Digest != "s:two" {
		t.Errorf("after storing a digest: %+v, %v", m, err)
	}
	var version int
	if err := conn.QueryRow(ctx, `SELECT version FROM popbridge_schema`).Scan(&version); err != nil || version != 4 {
		t.Errorf("schema version after Open = %d, %v; want 4 (accounts, digests, then last logins)", version, err)
	}
	last := time.Date(2026, 12, 3, 13, 0, 0, 1234567, time.UTC)
	if err := s.ApplyClient(ctx, k, state.ClientChange{LastLogin: last}); err != nil {
		t.Fatal(err)
	}
	if c, err = s.LoadClient(ctx, k); err != nil || !c.LastLogin.Equal(last.Truncate(time.Microsecond)) || c.Pending == nil {
		t.Errorf("after storing a last login: %+v, %v", c, err)
	}
}
