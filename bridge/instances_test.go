package bridge

import (
	"strings"
	"testing"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/popbridge/popbridge/upstream"
)

// startInstance is one popbridge process of several behind a load
// balancer: its own listener, the shared PostgreSQL store.
func startInstance(t *testing.T, cfg Config, dsn string) string {
	t.Helper()
	return startBridge(t, nil, withBaseConfig(cfg), withPostgres(dsn)).addr
}

// TestInstancesSharePostgres: two popbridge instances on one PostgreSQL
// store give a device the same UIDLs whichever instance it reaches, hold
// its maildrop lock across instances (invariant 7), and see each other's
// deletions.
func TestInstancesSharePostgres(t *testing.T) {
	dsn := pgtest.Schema(t)
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 3)
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Upstream.Address = mem.Addr
	cfg.Upstream.Security = upstream.SecurityNone
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
