package bridge

// Enrolled accounts end to end: popbridge in front of the fake OAuth
// provider and its OAuth-only IMAP server (internal/oauthtest). Accounts
// are enrolled with the real flows (bridge/oauth) into the real registry
// (bridge/account), and POP3 clients log in with the app password.
//
//	go test -race -count=1 -run 'TestEnrolled' ./bridge/

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/bridge/account"
	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/internal/oauthtest"
	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/popbridge/popbridge/upstream"
)

// fastArgon keeps the tests' app password hashes cheap.
var fastArgon = secret.Params{Time: 1, Memory: 64, Threads: 1}

// oauthEnv is the fake provider with its IMAP server, and popbridge
// serving enrolled accounts from it on a state file (or a PostgreSQL
// schema) that outlives restarts.
type oauthEnv struct {
	t     *testing.T
	fake  *oauthtest.Env
	clock *oauthtest.Clock
	cfg   Config

	statePath string // bolt; "" with dsn
	dsn       string

	st   state.Store
	reg  *account.Registry
	srv  *Server
	addr string
	done chan error
	logs *observer.ObservedLogs
	// serverKey, when set before start, is the registry's server key.
	serverKey []byte
}

// fakeUpstream is the [[upstreams]] entry of the fake provider: a generic
// provider with the given client and flow.
func fakeUpstream(fake *oauthtest.Env, name, clientID string, flow oauth.Flow) OAuthUpstreamConfig {
	oc := oauth.Config{
		Provider:      oauth.ProviderGeneric,
		ClientID:      clientID,
		Flow:          string(flow),
		AuthURL:       fake.Provider.AuthURL(),
		TokenURL:      fake.Provider.TokenURL(),
		DeviceAuthURL: fake.Provider.DeviceAuthURL(),
		Scopes:        []string{oauthtest.IMAPScope, oauth.ScopeOfflineAccess},
		Mechanism:     "XOAUTH2",
	}
	if flow == oauth.FlowClientCredentials {
		oc.Scopes = []string{oauthtest.AppScope}
		oc.ClientSecretEnv = "POPBRIDGE_TEST_APP_SECRET"
	}
	return OAuthUpstreamConfig{Name: name, Provider: oauth.ProviderGeneric, Address: fake.IMAP.Addr(), Security: "none", OAuth: oc}
}

func newOAuthEnv(t *testing.T, opts oauthtest.Options, mutate ...func(*Config)) *oauthEnv {
	t.Helper()
	clock := oauthtest.NewClock(time.Now())
	opts.Now = clock.Now
	fake := oauthtest.Start(t, opts)
	for _, m := range []string{oauthtest.User, oauthtest.SharedMailbox} {
		if _, err := fake.Seed(m, 3); err != nil {
			t.Fatal(err)
		}
	}
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Upstream.Address = "" // no pass-through unless a test sets one
	cfg.Auth.AllowInsecureAuth = true
	cfg.Limits.LoginFailureDelay, cfg.Limits.LoginFailureDelayMax = 0, 0
	cfg.Upstreams = []OAuthUpstreamConfig{fakeUpstream(fake, "fake", oauthtest.PublicClientID, oauth.FlowDevice)}
	for _, m := range mutate {
		m(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e := &oauthEnv{t: t, fake: fake, clock: clock, cfg: cfg, statePath: filepath.Join(t.TempDir(), "state.db")}
	t.Cleanup(e.stop)
	return e
}

func (e *oauthEnv) openStore() state.Store {
	e.t.Helper()
	var st state.Store
	var err error
	if e.dsn != "" {
		st, err = pgstore.Open(e.t.Context(), e.dsn, nil)
	} else {
		st, err = boltstore.Open(e.statePath, nil)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *oauthEnv) registry(st state.Store) *account.Registry {
	e.t.Helper()
	reg, err := account.New(st.(state.AccountStore), &account.Options{Params: fastArgon, Now: e.clock.Now, ServerKey: e.serverKey})
	if err != nil {
		e.t.Fatal(err)
	}
	return reg
}

// options are the bridge's: the fast registry, the fake clock on every
// OAuth client.
func (e *oauthEnv) options(reg *account.Registry) AccountOptions {
	return AccountOptions{Registry: reg, Client: func(_ string, c *oauth.Client) { c.SetClock(e.clock.Now) }}
}

// start runs popbridge on the state.
func (e *oauthEnv) start() {
	e.t.Helper()
	e.st = e.openStore()
	e.reg = e.registry(e.st)
	var core zapcore.Core
	core, e.logs = observer.New(zapcore.DebugLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(e.t).Core(), core))
	srv, err := NewServerWith(e.cfg, e.st, log, e.options(e.reg))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		e.t.Fatal(err)
	}
	e.srv, e.addr = srv, srv.Addr().String()
	e.done = make(chan error, 1)
	go func() { e.done <- srv.Serve() }()
}

func (e *oauthEnv) stop() {
	if e.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	<-e.done
	e.st.Close()
	e.srv = nil
}

// client is the OAuth client of the [[upstreams]] entry name.
func (e *oauthEnv) client(name string) *oauth.Client {
	e.t.Helper()
	oc, _, ok := e.cfg.OAuthUpstream(name)
	if !ok {
		e.t.Fatalf("no upstream %q", name)
	}
	c, err := oauth.NewClient(oc)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetClock(e.clock.Now)
	return c
}

// enrollDevice runs the device flow against the fake provider, the user
// approving as oauthtest.User, and enrolls the grant as name; it returns
// the app password.
func (e *oauthEnv) enrollDevice(name, upstreamName, mailbox string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := e.client(upstreamName).StartDevice(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.fake.Provider.Approve(d.UserCode, oauthtest.User); err != nil {
		e.t.Fatal(err)
	}
	g, err := d.Wait(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.add(account.Spec{Name: name, Upstream: upstreamName, Provider: oauth.ProviderGeneric,
		Identity: oauthtest.User, Mailbox: mailbox}, ToAccountGrant(g))
}

func (e *oauthEnv) add(spec account.Spec, g *account.Grant) string {
	e.t.Helper()
	pw, err := e.reg.Add(context.Background(), spec, g)
	if err != nil {
		e.t.Fatal(err)
	}
	return pw
}

// mailOf returns what the fake IMAP server holds in address's INBOX.
func (e *oauthEnv) mailOf(address string) [][]byte {
	return oauthtest.SampleMessages(address, 3)
}

// readAll logs in, checks that LIST shows want and RETR returns each
// message byte for byte, and returns the UIDLs.
func (e *oauthEnv) readAll(user, pass string, want [][]byte) []string {
	e.t.Helper()
	c := dialPOP(e.t, e.addr)
	c.login(user, pass)
	l := c.list()
	if len(l) != len(want) {
		e.t.Fatalf("LIST of %s: %d messages, want %d", user, len(l), len(want))
	}
	var uidls []string
	for i, m := range want {
		if got := c.retr(i + 1); !bytes.Equal(got, m) {
			e.t.Errorf("RETR %d of %s:\n got %q\nwant %q", i+1, user, got, m)
		}
		uidls = append(uidls, l[i].uidl)
	}
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		e.t.Errorf("QUIT: %s", q)
	}
	return uidls
}

// refused logs in and returns the -ERR line.
func (e *oauthEnv) refused(user, pass string) string {
	e.t.Helper()
	c := dialPOP(e.t, e.addr)
	c.ok("USER %s", user)
	line := c.cmd("PASS %s", pass)
	if !strings.HasPrefix(line, "-ERR") {
		e.t.Fatalf("PASS for %s: %q, want -ERR", user, line)
	}
	c.drop()
	return line
}

// xoauthLogins counts the fake IMAP server's successful XOAUTH2 logins
// of mailbox, and all its attempts.
func (e *oauthEnv) xoauthLogins(mailbox string) (ok, all int) {
	for _, a := range e.fake.IMAP.Attempts() {
		if a.User == mailbox {
			all++
			if a.OK && a.Mechanism == "XOAUTH2" {
				ok++
			}
		}
	}
	return ok, all
}

// TestEnrolledDeviceSession: an account enrolled with the device flow is
// read with its app password, device tags give views of their own, the
// upstream login is XOAUTH2 as the grant's user, and a wrong app password
// never reaches the upstream or the provider.
func TestEnrolledDeviceSession(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{RequireOfflineAccess: true})
	e.start()
	pw := e.enrollDevice("scanner@contoso.example", "fake", "")
	want := e.mailOf(oauthtest.User)

	u1 := e.readAll("scanner@contoso.example", pw, want)
	u2 := e.readAll("scanner@contoso.example#scanner", pw, want)
	u3 := e.readAll("Scanner@contoso.example", pw, want)
	if strings.Join(u1, " ") != strings.Join(u2, " ") || strings.Join(u1, " ") != strings.Join(u3, " ") {
		t.Errorf("UIDLs differ between views: %v, %v, %v", u1, u2, u3)
	}
	ok, all := e.xoauthLogins(oauthtest.User)
	if ok != 3 || all != 3 {
		t.Errorf("upstream XOAUTH2 logins as %s: %d ok of %d, want 3 of 3", oauthtest.User, ok, all)
	}

	stats := e.fake.Provider.Stats()
	attempts := len(e.fake.IMAP.Attempts())
	for _, bad := range []string{"wrong-password", pw + "x", pw[:len(pw)-1]} {
		line := e.refused("scanner@contoso.example#scanner", bad)
		if !strings.HasPrefix(line, "-ERR [AUTH]") {
			t.Errorf("wrong app password: %q, want -ERR [AUTH]", line)
		}
	}
	if n := len(e.fake.IMAP.Attempts()); n != attempts {
		t.Errorf("wrong app passwords reached the upstream: %d IMAP logins, want %d", n, attempts)
	}
	if s := e.fake.Provider.Stats(); s.TokenRequests != stats.TokenRequests {
		t.Errorf("wrong app passwords reached the provider: %d token requests, want %d", s.TokenRequests, stats.TokenRequests)
	}
	// A token of the client's own is refused for an enrolled name.
	c := dialPOP(t, e.addr)
	tok := e.fake.Provider.IssueAccessToken(oauthtest.User, oauthtest.IMAPScope)
	line := c.cmd("AUTH XOAUTH2 %s", xoauth2IR(oauthtest.User, tok))
	if strings.HasPrefix(line, "+ ") {
		line = c.cmd("") // the client's answer to the error challenge (RFC 7628 §3.2.3)
	}
	if !strings.HasPrefix(line, "-ERR [AUTH]") {
		t.Errorf("AUTH XOAUTH2 for an enrolled name: %q", line)
	}
}

// TestEnrolledWinsOverPassthrough: a name that is enrolled is never passed
// through, even with the upstream's own password; other names are, unless
// accounts.passthrough is off.
func TestEnrolledWinsOverPassthrough(t *testing.T) {
	for _, passthrough := range []bool{true, false} {
		t.Run(map[bool]string{true: "passthrough", false: "no-passthrough"}[passthrough], func(t *testing.T) {
			pass := startUsersUpstream(t, true, oauthtest.User, "carol@example.com")
			e := newOAuthEnv(t, oauthtest.Options{}, func(c *Config) {
				c.Upstream.Address = pass.addr
				c.Upstream.Security = upstream.SecurityNone
				c.Accounts.Passthrough = passthrough
			})
			e.start()
			pw := e.enrollDevice(oauthtest.User, "fake", "")

			line := e.refused(oauthtest.User, usersPassword)
			if !strings.HasPrefix(line, "-ERR [AUTH]") {
				t.Errorf("enrolled name with the pass-through password: %q", line)
			}
			if n := pass.LoginsOf(oauthtest.User); n != 0 {
				t.Errorf("the enrolled name reached the pass-through upstream %d times", n)
			}
			e.readAll(oauthtest.User, pw, e.mailOf(oauthtest.User))

			if passthrough {
				c := dialPOP(t, e.addr)
				c.login("carol@example.com", usersPassword)
				if l := c.list(); len(l) != 1 {
					t.Errorf("pass-through carol: %d messages, want 1", len(l))
				}
				c.quit()
				if n := pass.LoginsOf("carol@example.com"); n != 1 {
					t.Errorf("carol's pass-through logins: %d, want 1", n)
				}
			} else {
				if line := e.refused("carol@example.com", usersPassword); !strings.HasPrefix(line, "-ERR [AUTH]") {
					t.Errorf("pass-through off: %q", line)
				}
				if n := pass.LoginsOf("carol@example.com"); n != 0 {
					t.Errorf("pass-through off, yet carol reached the upstream %d times", n)
				}
			}
		})
	}
}

// TestEnrolledTokenExpiry: an access token that expires between two polls
// is refreshed, whether popbridge sees it coming (the expiry passed on the
// clock: refreshed before the login) or the upstream refuses it first
// (expired early: one forced refresh and a second login); with strict
// rotation the rotated refresh token is the one stored, and it survives a
// restart.
func TestEnrolledTokenExpiry(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{Rotation: oauthtest.RotateStrict, AccessTokenLifetime: time.Hour})
	e.start()
	pw := e.enrollDevice("printer", "fake", "")
	want := e.mailOf(oauthtest.User)
	u0 := e.readAll("printer", pw, want)

	s0 := e.fake.Provider.Stats()
	e.clock.Advance(2 * time.Hour) // the token expired between two polls
	e.readAll("printer", pw, want)
	s1 := e.fake.Provider.Stats()
	if s1.Refreshes != s0.Refreshes+1 {
		t.Errorf("after the expiry: %d refreshes, want %d", s1.Refreshes, s0.Refreshes+1)
	}
	if _, all := e.xoauthLogins(oauthtest.User); all != 2 {
		t.Errorf("the expired token was sent upstream: %d logins, want 2", all)
	}

	// Expired early, without popbridge knowing: the upstream refuses it.
	e.fake.Provider.ExpireAccessTokens(oauthtest.User)
	e.readAll("printer", pw, want)
	if s := e.fake.Provider.Stats(); s.Refreshes != s1.Refreshes+1 {
		t.Errorf("after the upstream refused the token: %d refreshes, want %d", s.Refreshes, s1.Refreshes+1)
	}
	if ok, all := e.xoauthLogins(oauthtest.User); ok != 3 || all != 4 {
		t.Errorf("logins: %d ok of %d, want 3 of 4 (one refused, then one forced refresh)", ok, all)
	}

	// Restart: the rotated refresh token (strict rotation: the old one is
	// dead) is the one stored.
	e.stop()
	e.start()
	e.clock.Advance(2 * time.Hour)
	u1 := e.readAll("printer", pw, want)
	if strings.Join(u0, " ") != strings.Join(u1, " ") {
		t.Errorf("UIDLs changed: %v, then %v", u0, u1)
	}
	if s := e.fake.Provider.Stats(); s.RefreshFailures != 0 || s.Refreshes != s1.Refreshes+2 {
		t.Errorf("after the restart: %d refreshes, %d refused; want %d, 0", s.Refreshes, s.RefreshFailures, s1.Refreshes+2)
	}
	if n := e.srv.metrics.oauthRefreshes.WithLabelValues("ok"); testutil.ToFloat64(n) != 1 {
		t.Errorf("popbridge_oauth_refreshes_total{result=ok} after the restart = %v, want 1", testutil.ToFloat64(n))
	}
}

// TestEnrolledRevoked: a revoked grant gives the POP3 client -ERR [AUTH]
// saying the account must be enrolled again, is logged once (not at every
// login), shows as reconsent-needed in the registry, and later logins do
// not ask the provider again.
func TestEnrolledRevoked(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{})
	e.start()
	pw := e.enrollDevice("scanner", "fake", "")
	e.readAll("scanner", pw, e.mailOf(oauthtest.User))

	e.fake.Provider.Revoke(oauthtest.User)
	for i := range 3 {
		line := e.refused("scanner#dev", pw)
		if !strings.HasPrefix(line, "-ERR [AUTH]") || !strings.Contains(line, "enroll it again") {
			t.Errorf("login %d after the revocation: %q", i+1, line)
		}
	}
	s := e.fake.Provider.Stats()
	if s.RefreshFailures != 1 {
		t.Errorf("refused refreshes: %d, want 1 (later logins must not ask again)", s.RefreshFailures)
	}
	info, err := e.reg.Lookup(context.Background(), "scanner")
	if err != nil {
		t.Fatal(err)
	}
	if info.Grant.Status != account.GrantReconsentNeeded || !strings.Contains(info.Grant.Reason, "invalid_grant") {
		t.Errorf("grant status %q (%q), want reconsent-needed with invalid_grant", info.Grant.Status, info.Grant.Reason)
	}
	var warned int
	for _, l := range e.logs.All() {
		if strings.Contains(l.Message, "no longer valid") {
			warned++
		}
	}
	if warned != 1 {
		t.Errorf("the lost grant was logged %d times, want once", warned)
	}
	if v := testutil.ToFloat64(e.srv.metrics.oauthRefreshes.WithLabelValues("reconsent")); v != 1 {
		t.Errorf("popbridge_oauth_refreshes_total{result=reconsent} = %v, want 1", v)
	}
}

// TestEnrolledSharedMailbox: a delegated account that opens a shared
// mailbox its user may open, and an app-only account (client credentials,
// the secret from the environment) of the same shared mailbox: both read
// the shared mailbox's mail, logged in upstream as the mailbox.
func TestEnrolledSharedMailbox(t *testing.T) {
	t.Setenv("POPBRIDGE_TEST_APP_SECRET", oauthtest.AppSecret)
	e := newOAuthEnv(t, oauthtest.Options{}, func(c *Config) {
		app := c.Upstreams[0]
		app.Name = "fake-app"
		app.OAuth.ClientID = oauthtest.AppClientID
		app.OAuth.Flow = string(oauth.FlowClientCredentials)
		app.OAuth.Scopes = []string{oauthtest.AppScope}
		app.OAuth.ClientSecretEnv = "POPBRIDGE_TEST_APP_SECRET"
		c.Upstreams = append(c.Upstreams, app)
	})
	e.start()
	want := e.mailOf(oauthtest.SharedMailbox)

	pwShared := e.enrollDevice("frontdesk", "fake", oauthtest.SharedMailbox)
	u1 := e.readAll("frontdesk", pwShared, want)

	pwApp := e.add(account.Spec{Name: "frontdesk-app", Kind: account.AppOnly, Upstream: "fake-app",
		Provider: oauth.ProviderGeneric, Identity: oauthtest.SharedMailbox}, nil)
	u2 := e.readAll("frontdesk-app", pwApp, want)
	e.readAll("frontdesk-app#2", pwApp, want)
	if strings.Join(u1, " ") != strings.Join(u2, " ") {
		t.Errorf("one mailbox, two accounts, different UIDLs: %v, %v", u1, u2)
	}
	if ok, _ := e.xoauthLogins(oauthtest.SharedMailbox); ok != 3 {
		t.Errorf("XOAUTH2 logins as the shared mailbox: %d, want 3", ok)
	}
	if s := e.fake.Provider.Stats(); s.ClientCredentials != 1 {
		t.Errorf("app tokens asked for: %d, want 1 (cached while fresh)", s.ClientCredentials)
	}
	if line := e.refused("frontdesk-app", "not-the-password"); !strings.HasPrefix(line, "-ERR [AUTH]") {
		t.Errorf("app-only, wrong app password: %q", line)
	}
}

// TestEnrolledStateHoldsNoToken: after a real enrollment, sessions and a
// refresh, the raw state file holds neither the access token, nor the
// refresh token, nor the app password.
func TestEnrolledStateHoldsNoToken(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{Rotation: oauthtest.RotateStrict})
	e.start()
	pw := e.enrollDevice("scanner", "fake", "")
	want := e.mailOf(oauthtest.User)
	e.readAll("scanner", pw, want)
	e.clock.Advance(2 * time.Hour)
	e.readAll("scanner#b", pw, want)

	s, err := e.reg.Verify(context.Background(), "scanner", pw)
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.Grant(context.Background())
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	raw, err := os.ReadFile(e.statePath)
	if err != nil {
		t.Fatal(err)
	}
	if g.AccessToken == "" || g.RefreshToken == "" {
		t.Fatalf("grant without tokens: %+v", g)
	}
	for what, s := range map[string]string{"access token": g.AccessToken, "refresh token": g.RefreshToken, "app password": pw} {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("the state file holds the %s", what)
		}
	}
	if !bytes.Contains(raw, []byte("scanner")) {
		t.Errorf("the state file does not even hold the account name: wrong file?")
	}
}

// TestEnrolledInstancesRefreshOnce: two instances on one PostgreSQL
// database, many logins of one account at once after its token expired:
// the grant is refreshed once, and every login succeeds.
func TestEnrolledInstancesRefreshOnce(t *testing.T) {
	dsn := pgtest.Schema(t)
	e := newOAuthEnv(t, oauthtest.Options{Rotation: oauthtest.RotateStrict})
	e.dsn = dsn
	e.start()
	pw := e.enrollDevice("scanner", "fake", "")
	other := &oauthEnv{t: t, fake: e.fake, clock: e.clock, cfg: e.cfg, dsn: dsn}
	other.start()
	t.Cleanup(other.stop)

	want := e.mailOf(oauthtest.User)
	e.readAll("scanner", pw, want)
	s0 := e.fake.Provider.Stats()
	e.clock.Advance(2 * time.Hour)
	var wg sync.WaitGroup
	for i := range 6 {
		inst := e
		if i%2 == 1 {
			inst = other
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialPOP(t, inst.addr)
			c.ok("USER scanner#d%d", i)
			if line := c.cmd("PASS %s", pw); !strings.HasPrefix(line, "+OK") {
				t.Errorf("login %d: %q", i, line)
				return
			}
			c.quit()
		}()
	}
	wg.Wait()
	if s := e.fake.Provider.Stats(); s.Refreshes != s0.Refreshes+1 || s.RefreshFailures != 0 {
		t.Errorf("refreshes: %d (%d refused), want %d (0 refused)", s.Refreshes-s0.Refreshes, s.RefreshFailures, 1)
	}
}
