package account

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
)

// fastParams keep the tests quick; one test runs the defaults.
var fastParams = secret.Params{Time: 1, Memory: 64, Threads: 1}

// store is a state.Store that keeps accounts.
type store interface {
	state.Store
	state.AccountStore
}

// backing is one backing store: a bbolt file or a PostgreSQL schema.
type backing struct {
	kind string // "bolt" or "pg"
	path string
	dsn  string
}

// forEachBacking runs fn on a fresh bbolt file, and on a fresh PostgreSQL
// schema when POPBRIDGE_TEST_PG is set.
func forEachBacking(t *testing.T, fn func(t *testing.T, b *backing)) {
	t.Run("bolt", func(t *testing.T) {
		fn(t, &backing{kind: "bolt", path: filepath.Join(t.TempDir(), "state.db")})
	})
	t.Run("pg", func(t *testing.T) {
		fn(t, &backing{kind: "pg", dsn: pgtest.Schema(t)})
	})
}

// open opens a Store on b, closed when t ends. A bbolt file is open in one
// Store at a time.
func (b *backing) open(t *testing.T) store {
	t.Helper()
	var s store
	var err error
	if b.kind == "bolt" {
		s, err = boltstore.Open(b.path, nil)
	} else {
		s, err = pgstore.Open(t.Context(), b.dsn, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// dump returns every byte of the stored state: the whole bbolt file, or
// the text of every row of every table of the schema (bytea shows as hex
// there).
func (b *backing) dump(t *testing.T) []byte {
	t.Helper()
	if b.kind == "bolt" {
		return readFile(t, b.path)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, tbl := range tables {
		rows, err := conn.Query(ctx, `SELECT t::text FROM `+pgx.Identifier{tbl}.Sanitize()+` t`)
		if err != nil {
			t.Fatal(err)
		}
		texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range texts {
			out = append(out, tbl+": "+s+"\n"...)
		}
	}
	return out
}

// newRegistry returns a Registry over s with fast parameters and opts.
func newRegistry(t *testing.T, s state.AccountStore, opts *Options) *Registry {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Params == (secret.Params{}) {
		o.Params = fastParams
	}
	r, err := New(s, &o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var testSpec = Spec{Name: "alice@contoso.example", Upstream: "m365", Provider: "microsoft", Identity: "alice@contoso.example"}

// testGrant returns a grant with tokens unlike any other, as long as
// real ones.
func testGrant(tag string) *Grant {
	return &Grant{
		AccessToken:  "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-" + tag + "." + randomToken(),
		TokenType:    "Bearer",
		RefreshToken: "0.AQ8A-refresh-" + tag + "-" + randomToken(),
		Expiry:       time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond),
		Scope:        "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
	}
}

func randomToken() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	b := secret.Random(48)
	for i := range b {
		b[i] = alphabet[b[i]%64]
	}
	return string(b)
}

func mustAdd(t *testing.T, r *Registry, spec Spec, g *Grant) string {
	t.Helper()
	pw, err := r.Add(t.Context(), spec, g)
	if err != nil {
		t.Fatalf("Add(%q): %v", spec.Name, err)
	}
	return pw
}

func mustVerify(t *testing.T, r *Registry, name, pw string) *Session {
	t.Helper()
	s, err := r.Verify(t.Context(), name, pw)
	if err != nil {
		t.Fatalf("Verify(%q, %q): %v", name, pw, err)
	}
	t.Cleanup(s.Close)
	return s
}

func mustGrant(t *testing.T, s *Session) *Grant {
	t.Helper()
	g, err := s.Grant(t.Context())
	if err != nil {
		t.Fatalf("Grant of %q: %v", s.Name(), err)
	}
	return g
}

func checkGrant(t *testing.T, got, want *Grant) {
	t.Helper()
	if got == nil || got.AccessToken != want.AccessToken || got.RefreshToken != want.RefreshToken ||
		got.TokenType != want.TokenType || !got.Expiry.Equal(want.Expiry) || got.Scope != want.Scope {
		t.Fatalf("grant = %+v\nwant %+v", got, want)
	}
}

func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: %v, want %v", what, err, target)
	}
}

// hookStore runs beforePut before the first PutAccount through it.
type hookStore struct {
	state.AccountStore
	beforePut func()
}

func (h *hookStore) PutAccount(ctx context.Context, a *state.Account) (uint64, error) {
	if f := h.beforePut; f != nil {
		h.beforePut = nil
		f()
	}
	return h.AccountStore.PutAccount(ctx, a)
}
