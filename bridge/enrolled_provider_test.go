package bridge

// Provider profiles of [[upstreams]] entries: an enrolled account follows
// the profile of its entry (from the preset), with the entry's own
// connection budget and back-off windows, counted apart from [upstream]'s
// and kept across a reload.
//
//	go test -race -count=1 -run 'TestEnrolledProfile' ./bridge/

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/bridge/account"
	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/oauthtest"
	"github.com/popbridge/popbridge/upstream"
)

// presetEntry is an OAuth-only imitation of a provider's IMAP service
// (its user is oauthtest.User) and the [[upstreams]] entry, with the
// provider's preset, that serves enrolled accounts from it. The mailbox
// "Trash" and the profile's Trash both exist, neither with \Trash: which
// one the move policy takes says which profile is followed.
type presetEntry struct {
	mem   *imaptest.MemServer
	entry OAuthUpstreamConfig
}

func newPresetEntry(t *testing.T, fake *oauthtest.Env, name, provider, trash string, opts ...imaptest.Option) *presetEntry {
	t.Helper()
	opts = append([]imaptest.Option{imaptest.WithOAuth(fake.Provider), imaptest.WithCredentials(oauthtest.User, "unused")}, opts...)
	mem := imaptest.NewMemServer(t, opts...)
	mem.Create("Trash")
	mem.Create(trash)
	for i := 1; i <= 3; i++ {
		mem.Append("INBOX", message(fmt.Sprintf("m%d@%s", i, name), fmt.Sprintf("message %d", i), "body\r\n"))
	}
	oc := oauth.Config{
		Provider:      provider,
		AuthURL:       fake.Provider.AuthURL(),
		TokenURL:      fake.Provider.TokenURL(),
		DeviceAuthURL: fake.Provider.DeviceAuthURL(),
		Scopes:        []string{oauthtest.IMAPScope, oauth.ScopeOfflineAccess},
		ClientID:      oauthtest.PublicClientID,
	}
	if provider == oauth.ProviderGmail {
		// Google's clients have a secret.
		oc.ClientID = oauthtest.ConfidentialClientID
		oc.ClientSecretEnv = "POPBRIDGE_TEST_GMAIL_SECRET"
		t.Setenv(oc.ClientSecretEnv, oauthtest.ConfidentialSecret)
	}
	return &presetEntry{mem: mem, entry: OAuthUpstreamConfig{
		Name: name, Provider: provider, Address: mem.Addr, Security: "none",
		Timeout: 3 * time.Second, // also how long a login beyond the budget queues
		OAuth:   oc,
	}}
}

// enrollOn enrolls name on the entry with a grant whose access token the
// fake provider issued (valid for an hour: no refresh) and returns its app
// password.
func (e *oauthEnv) enrollOn(name string, p *presetEntry) string {
	e.t.Helper()
	g := &account.Grant{AccessToken: e.fake.Provider.IssueAccessToken(oauthtest.User, oauthtest.IMAPScope),
		TokenType: "Bearer", Expiry: e.clock.Now().Add(50 * time.Minute)}
	return e.add(account.Spec{Name: name, Upstream: p.entry.Name, Provider: p.entry.Provider, Identity: oauthtest.User}, g)
}

// loginsOn counts the AUTHENTICATE commands mem received.
func loginsOn(mem *imaptest.MemServer) int { return len(mem.CommandsNamed("AUTHENTICATE")) }

// holdSessions logs in n sessions of name (devices dev1..devn) and
// returns them.
func holdSessions(t *testing.T, addr, name, dev, pw string, n int) []*popConn {
	t.Helper()
	var out []*popConn
	for i := 1; i <= n; i++ {
		c := dialPOP(t, addr)
		c.ok("USER %s#%s%d", name, dev, i)
		if got := c.cmd("PASS %s", pw); !strings.HasPrefix(got, "+OK") {
			t.Fatalf("session %d of %s: %q", i, name, got)
		}
		out = append(out, c)
	}
	return out
}

// refusedLogin logs in name#device and returns the answer, which must be
// -ERR.
func refusedLogin(t *testing.T, addr, login, pw string) string {
	t.Helper()
	c := dialPOP(t, addr)
	defer c.drop()
	c.ok("USER %s", login)
	got := c.cmd("PASS %s", pw)
	if !strings.HasPrefix(got, "-ERR") {
		t.Errorf("login of %s = %q, want -ERR", login, got)
	}
	return got
}

// manySessions lets a test hold more sessions than the defaults allow.
func manySessions(c *Config) {
	c.Limits.MaxSessionsPerAccount = 100
	c.Limits.MaxConnectionsPerIP = 100
}

// TestEnrolledProfileOfEntry: an enrolled account on a gmail-preset
// (microsoft365-preset) [[upstreams]] entry follows the gmail
// (microsoft365) profile: its upstream connection budget is 15 (20), the
// next login queues and is refused with [SYS/TEMP] before the upstream
// hears of it, while the budget of [upstream] (1 here) neither limits it
// nor is used up by it; the move policy takes the profile's Trash.
func TestEnrolledProfileOfEntry(t *testing.T) {
	for _, tc := range []struct {
		provider, trash string
		budget          int
	}{
		{oauth.ProviderGmail, "[Gmail]/Trash", 15},
		{oauth.ProviderMicrosoft365, "Deleted Items", 20},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			pass := imaptest.NewMemServer(t)
			pass.Create("Trash", imap.MailboxAttrTrash)
			pass.Append("INBOX", message("p1@pass", "pass-through", "body\r\n"))
			e := newOAuthEnv(t, oauthtest.Options{}, manySessions, func(c *Config) {
				c.Upstream.Address = pass.Addr
				c.Upstream.Security = upstream.SecurityNone
				c.Upstream.MaxConnectionsPerAccount = 1
				c.Upstream.Timeout = 3 * time.Second
			})
			p := newPresetEntry(t, e.fake, "entry", tc.provider, tc.trash)
			e.cfg.Upstreams = append(e.cfg.Upstreams, p.entry)
			if err := e.cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			e.start()
			name := "reader@example.org"
			pw := e.enrollOn(name, p)

			alice := e.session(pass)
			held := holdSessions(t, e.addr, name, "d", pw, tc.budget)
			if n := loginsOn(p.mem); n != tc.budget {
				t.Fatalf("%d upstream logins for %d sessions", n, tc.budget)
			}
			if got := refusedLogin(t, e.addr, name+"#extra", pw); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
				t.Errorf("login beyond the entry's budget = %q, want -ERR [SYS/TEMP]", got)
			}
			if n := loginsOn(p.mem); n != tc.budget {
				t.Errorf("the login beyond the budget reached the upstream (%d logins, want %d)", n, tc.budget)
			}
			// [upstream]'s account still holds its one place, and only
			// that one.
			if got := refusedLogin(t, e.addr, pass.User+"#b", pass.Pass); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
				t.Errorf("second pass-through session = %q, want -ERR [SYS/TEMP] ([upstream]'s budget of 1)", got)
			}
			alice.quit()
			for _, c := range held {
				c.quit()
			}

			c := dialPOP(t, e.addr)
			c.login(name+"#d1", pw)
			c.ok("DELE 1")
			if q := c.quit(); !strings.HasPrefix(q, "+OK") {
				t.Fatalf("QUIT = %q", q)
			}
			assertSubjects(t, "INBOX", p.mem.Messages("INBOX"), "message 2", "message 3")
			assertSubjects(t, tc.trash, p.mem.Messages(tc.trash), "message 1")
			assertSubjects(t, "Trash", p.mem.Messages("Trash"))
		})
	}
}

// session logs in to the pass-through upstream's account.
func (e *oauthEnv) session(pass *imaptest.MemServer) *popConn {
	e.t.Helper()
	c := dialPOP(e.t, e.addr)
	c.login(pass.User, pass.Pass)
	return c
}

// TestEnrolledProfileReload: a reload keeps the state of an unchanged
// [[upstreams]] entry: the connections its accounts hold still count
// (the 16th on gmail is refused), and a back-off window opened by a
// throttling answer still holds, also when [upstream] changed; a throttled
// account of one entry does not delay the accounts of another, though both
// log in as the same upstream identity (each entry counts its own). An entry
// whose budget changed starts a new count for new sessions, and sessions
// of the old one end normally.
func TestEnrolledProfileReload(t *testing.T) {
	pass := imaptest.NewMemServer(t)
	e := newOAuthEnv(t, oauthtest.Options{}, manySessions, func(c *Config) {
		c.Upstream.Address = pass.Addr
		c.Upstream.Security = upstream.SecurityNone
	})
	gm := newPresetEntry(t, e.fake, "gmail", oauth.ProviderGmail, "[Gmail]/Trash")
	ms := newPresetEntry(t, e.fake, "m365", oauth.ProviderMicrosoft365, "Deleted Items")
	e.cfg.Upstreams = append(e.cfg.Upstreams, gm.entry, ms.entry)
	if err := e.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e.start()
	gmName, msName := "g@example.org", "m@example.org"
	gmPW, msPW := e.enrollOn(gmName, gm), e.enrollOn(msName, ms)

	// The Microsoft account is throttled: 120 s of back-off.
	ms.mem.Fail("SELECT", imaptest.ErrThrottled)
	if got := refusedLogin(t, e.addr, msName, msPW); !strings.HasPrefix(got, "-ERR [LOGIN-DELAY]") {
		t.Fatalf("throttled login = %q, want -ERR [LOGIN-DELAY]", got)
	}
	ms.mem.Fail("SELECT", nil)
	held := holdSessions(t, e.addr, gmName, "d", gmPW, 15)

	// Reload: [upstream] moved, the entries unchanged.
	pass2 := imaptest.NewMemServer(t)
	cfg := e.cfg
	cfg.Upstreams = slices.Clone(cfg.Upstreams)
	cfg.Upstream.Address = pass2.Addr
	cfg.Upstream.MaxConnectionsPerAccount = 3
	if err := e.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	logins := loginsOn(ms.mem)
	if got := refusedLogin(t, e.addr, msName, msPW); !strings.HasPrefix(got, "-ERR [LOGIN-DELAY]") {
		t.Errorf("throttled account's login after a reload = %q, want -ERR [LOGIN-DELAY]", got)
	}
	if n := loginsOn(ms.mem); n != logins {
		t.Errorf("a login within the back-off reached the upstream after a reload (%d logins, want %d)", n, logins)
	}
	if got := refusedLogin(t, e.addr, gmName+"#extra", gmPW); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("16th gmail session after a reload = %q, want -ERR [SYS/TEMP]", got)
	}
	held[0].quit()
	c := dialPOP(t, e.addr)
	c.login(gmName+"#d1", gmPW)
	held[0] = c

	// The gmail entry's budget changes: new sessions count anew, against 2.
	cfg.Upstreams[1].MaxConnectionsPerAccount = 2
	if err := e.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	fresh := holdSessions(t, e.addr, gmName, "new", gmPW, 2)
	if got := refusedLogin(t, e.addr, gmName+"#third", gmPW); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("third session against the changed budget of 2 = %q, want -ERR [SYS/TEMP]", got)
	}
	for _, c := range append(held, fresh...) {
		if q := c.quit(); !strings.HasPrefix(q, "+OK") {
			t.Errorf("QUIT = %q", q)
		}
	}
}

// TestEnrolledProfileCheck: `popbridge account test` of an account on a
// gmail-preset entry names the entry's profile, the Trash of the move
// policy and the entry's connection budget; with the expunge policy, that
// expunge does not delete there.
func TestEnrolledProfileCheck(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{})
	gm := newPresetEntry(t, e.fake, "gmail", oauth.ProviderGmail, "[Gmail]/Trash")
	e.cfg.Upstreams = append(e.cfg.Upstreams, gm.entry)
	e.start()
	name := "g@example.org"
	pw := e.enrollOn(name, gm)
	check := func(cfg Config) string {
		t.Helper()
		b, err := NewBridgeWith(cfg, e.st, nil, e.options(e.reg))
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		if err := b.CheckAccount(t.Context(), name, pw, &out); err != nil {
			t.Fatalf("CheckAccount: %v\n%s", err, out.String())
		}
		return out.String()
	}
	out := check(e.cfg)
	for _, w := range []string{"profile: gmail (preset)\n", "trash: [Gmail]/Trash (by name)\n",
		"connection budget: 15 upstream connections per account\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("account test printed\n%s\nwithout %q", out, w)
		}
	}
	cfg := e.cfg
	cfg.Delete.Policy = PolicyExpunge
	if out := check(cfg); !strings.Contains(out, "expunge: does NOT delete here") {
		t.Errorf("account test with the expunge policy on gmail printed\n%s", out)
	}
	if n := len(gm.mem.CommandsNamed("CREATE", "STORE", "MOVE", "EXPUNGE")); n != 0 {
		t.Errorf("account test changed the upstream: %v", gm.mem.CommandsNamed("CREATE", "STORE", "MOVE", "EXPUNGE"))
	}
}

// TestEnrolledProfileBudgetPerIdentity: the budget counts the connections
// of the upstream identity, which the provider limits: two login names
// enrolled for the same mailbox share its 15 on gmail.
func TestEnrolledProfileBudgetPerIdentity(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{}, manySessions)
	gm := newPresetEntry(t, e.fake, "gmail", oauth.ProviderGmail, "[Gmail]/Trash")
	e.cfg.Upstreams = append(e.cfg.Upstreams, gm.entry)
	e.start()
	pwA, pwB := e.enrollOn("a@example.org", gm), e.enrollOn("b@example.org", gm)
	held := append(holdSessions(t, e.addr, "a@example.org", "d", pwA, 10), holdSessions(t, e.addr, "b@example.org", "e", pwB, 5)...)
	if got := refusedLogin(t, e.addr, "b@example.org#extra", pwB); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("16th session of the identity = %q, want -ERR [SYS/TEMP]", got)
	}
	if n := loginsOn(gm.mem); n != 15 {
		t.Errorf("%d upstream logins of the identity, want 15", n)
	}
	for _, c := range held {
		c.quit()
	}
}

// TestCheckUpstreams: `popbridge check` lists each [[upstreams]] entry with
// its profile and connection budget, without connecting.
func TestCheckUpstreams(t *testing.T) {
	fake := oauthtest.Start(t, oauthtest.Options{})
	cfg := DefaultConfig()
	cfg.Upstream.Address = ""
	gm := newPresetEntry(t, fake, "gmail", oauth.ProviderGmail, "[Gmail]/Trash")
	ms := newPresetEntry(t, fake, "m365", oauth.ProviderMicrosoft365, "Deleted Items")
	ms.entry.MaxConnectionsPerAccount = 5
	gen := fakeUpstream(fake, "other", oauthtest.PublicClientID, oauth.FlowDevice)
	cfg.Upstreams = []OAuthUpstreamConfig{gm.entry, ms.entry, gen}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	CheckUpstreams(cfg, &out)
	want := "upstreams gmail: profile gmail (preset), connection budget: 15 upstream connections per account\n" +
		"upstreams m365: profile microsoft365 (preset), connection budget: 5 upstream connections per account\n" +
		"upstreams other: profile auto (recognized at the first login), connection budget: the profile's\n"
	if out.String() != want {
		t.Errorf("CheckUpstreams wrote\n%s\nwant\n%s", out.String(), want)
	}
}
