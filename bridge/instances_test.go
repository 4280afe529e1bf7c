package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/bridge/internal/imaptest"
	"github.com/popbridge/popbridge/state/pgstore"
)

// pgSchema returns a DSN of the test PostgreSQL (POPBRIDGE_TEST_PG, started
// by .ci/run) whose connections use a schema of their own, dropped at the
// end of the test.
func pgSchema(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("POPBRIDGE_TEST_PG")
	if dsn == "" {
		t.Skip("POPBRIDGE_TEST_PG is not set (see .ci/pg-start)")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var b [8]byte
	rand.Read(b[:])
	schema := "popbridge_e2e_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
			conn.Close(ctx)
		}
	})
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "search_path=" + schema
}

// instance is one popbridge process of several behind a load balancer: its
// own listener, the shared PostgreSQL store.
func startInstance(t *testing.T, cfg Config, dsn string) string {
	t.Helper()
	st, err := pgstore.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, st, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		st.Close()
	})
	return srv.Addr().String()
}

// TestInstancesSharePostgres: two popbridge instances on one PostgreSQL
// store give a device the same UIDLs whichever instance it reaches, hold
// its maildrop lock across instances (invariant 7), and see each other's
// deletions.
func TestInstancesSharePostgres(t *testing.T) {
	dsn := pgSchema(t)
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 3)
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Upstream.Address = mem.Addr
	cfg.Upstream.Security = "none"
	cfg.Auth.AllowInsecureAuth = true
	cfg.Delete.Policy = PolicyHide
	cfg.State.Driver, cfg.State.DSN = "postgres", dsn
	a := startInstance(t, cfg, dsn)
	b := startInstance(t, cfg, dsn)

	ca := dialPOP(t, a)
	ca.login(mem.User+"#phone", mem.Pass)
	uidls := ca.uidls()

	// The same device through the other instance: locked out while the
	// first session lasts.
	cb := dialPOP(t, b)
	cb.ok("USER %s#phone", mem.User)
	if r := cb.cmd("PASS %s", mem.Pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Errorf("the same device on the other instance: %q, want -ERR [IN-USE]", r)
	}
	// Another device there is fine, with the same UIDLs.
	other := dialPOP(t, b)
	other.login(mem.User+"#laptop", mem.Pass)
	if got := other.uidls(); strings.Join(got, " ") != strings.Join(uidls, " ") {
		t.Errorf("UIDLs differ between instances: %v and %v", uidls, got)
	}
	other.quit()

	ca.ok("DELE 2")
	ca.quit()
	// The phone, now on instance b, no longer sees what it deleted on a.
	cb = dialPOP(t, b)
	cb.login(mem.User+"#phone", mem.Pass)
	if got := cb.uidls(); strings.Join(got, " ") != uidls[0]+" "+uidls[2] {
		t.Errorf("after DELE on instance a, instance b shows %v", got)
	}
	cb.quit()
}
