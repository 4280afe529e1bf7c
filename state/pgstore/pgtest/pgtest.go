// Package pgtest gives tests a PostgreSQL schema of their own on the test
// server named by POPBRIDGE_TEST_PG (started by .ci/run with .ci/pg-start).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// DSN returns the DSN of the test database, or skips t.
func DSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("POPBRIDGE_TEST_PG")
	if dsn == "" {
		t.Skip("POPBRIDGE_TEST_PG is not set (see .ci/pg-start)")
	}
	return dsn
}

// Schema creates a schema of its own for t, dropped when t ends, and
// returns a DSN whose connections use it.
func Schema(t testing.TB) string {
	t.Helper()
	dsn := DSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var b [8]byte
	rand.Read(b[:])
	schema := "popbridge_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Error(err)
		}
	})
	// Settings the driver does not know go to the server as run-time
	// parameters.
	switch {
	case !strings.Contains(dsn, "://"):
		return dsn + " search_path=" + schema
	case strings.Contains(dsn, "?"):
		return dsn + "&search_path=" + schema
	default:
		return dsn + "?search_path=" + schema
	}
}
