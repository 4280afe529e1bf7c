package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/oauthtest"
)

// oauthServeEnv is the fake OAuth provider with its OAuth-only IMAP server
// (in the test process) and a configuration of `popbridge serve` that
// serves enrolled accounts from it, on a bolt state file that outlives
// restarts.
type oauthServeEnv struct {
	fake *oauthtest.Env
	dir  string
	cfg  string // the configuration file
	mail [][]byte

	mu        sync.Mutex
	refreshes []rotation // every refresh the provider answered
	onRefresh func(r rotation, answered bool)
}

// rotation is one refresh: the refresh token redeemed and the one issued.
type rotation struct{ old, new string }

// newOAuthServeEnv starts the fake provider with opts (and a hook that
// records every refresh), seeds User's INBOX with 3 messages and writes
// the configuration; the [[upstreams]] entry's flow is flow.
func newOAuthServeEnv(t *testing.T, opts oauthtest.Options, flow string, extra string) *oauthServeEnv {
	t.Helper()
	e := &oauthServeEnv{dir: t.TempDir()}
	opts.RequireOfflineAccess = true
	opts.OnRefresh = func(old, new string, answered bool) {
		r := rotation{old, new}
		e.mu.Lock()
		if !answered {
			e.refreshes = append(e.refreshes, r)
		}
		hook := e.onRefresh
		e.mu.Unlock()
		if hook != nil {
			hook(r, answered)
		}
	}
	e.fake = oauthtest.Start(t, opts)
	var err error
	if e.mail, err = e.fake.Seed(oauthtest.User, 3); err != nil {
		t.Fatal(err)
	}
	p := e.fake.Provider
	e.cfg = filepath.Join(e.dir, "popbridge.toml")
	toml := fmt.Sprintf(`[server]
listen = "127.0.0.1:0"

[auth]
allow_insecure_auth = true

[state]
path = %q

[accounts]
passthrough = false

[[upstreams]]
name = "fake"
provider = "generic"
address = %q
security = "none"
%s
[upstreams.oauth]
client_id = %q
flow = %q
auth_url = %q
token_url = %q
device_auth_url = %q
scopes = [%q, "offline_access"]
mechanism = "XOAUTH2"
`, filepath.Join(e.dir, "popbridge.db"), e.fake.IMAP.Addr(), extra, oauthtest.PublicClientID, flow,
		p.AuthURL(), p.TokenURL(), p.DeviceAuthURL(), oauthtest.IMAPScope)
	if err := os.WriteFile(e.cfg, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// hook sets what happens at each refresh (nil: nothing).
func (e *oauthServeEnv) hook(f func(r rotation, answered bool)) {
	e.mu.Lock()
	e.onRefresh = f
	e.mu.Unlock()
}

func (e *oauthServeEnv) rotations() []rotation {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.refreshes)
}

// account runs `popbridge account ARGS -config CFG` in process, with stdin,
// and returns what it printed.
func (e *oauthServeEnv) account(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	args = append(args, "-config", e.cfg)
	err := accountCmd(args, strings.NewReader(stdin), &out)
	return out.String(), err
}

var appPasswordLine = regexp.MustCompile(`(?m)^app password "([^"]+)" \(shown once\): (\S+)$`)

// enroll runs `popbridge account add User -upstream fake` (the flow of the
// configuration; the provider approves device codes by itself) and returns
// the app password.
func (e *oauthServeEnv) enroll(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := e.account(t, stdin, append([]string{"add", oauthtest.User, "-upstream", "fake"}, args...)...)
	if err != nil {
		t.Fatalf("account add: %v\n%s", err, out)
	}
	m := appPasswordLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("account add printed no app password:\n%s", out)
	}
	return m[2]
}

// readAll logs in to addr as user, RETRs every message, compares them with
// the seeded mail byte for byte, QUITs and returns the UIDLs.
func (e *oauthServeEnv) readAll(t *testing.T, addr, user, pass string) []string {
	t.Helper()
	c := dialKillPOP(t, addr)
	c.ok("USER " + user)
	c.ok("PASS " + pass)
	uidls := c.uidl()
	if len(uidls) != len(e.mail) {
		t.Fatalf("UIDL lists %d messages, want %d", len(uidls), len(e.mail))
	}
	for i, want := range e.mail {
		c.ok(fmt.Sprintf("RETR %d", i+1))
		if got := c.multi(); !bytes.Equal(got, want) {
			t.Errorf("RETR %d:\n got %q\nwant %q", i+1, got, want)
		}
	}
	c.ok("QUIT")
	return uidls
}

// TestRotatedTokenSurvivesKill: `popbridge serve` (the built binary) serves
// an account enrolled with `popbridge account add` from the fake provider,
// which rotates refresh tokens. The access token is made to expire, so the
// next POP3 login refreshes the grant:
//
//  1. after a clean restart, the next refresh redeems the refresh token
//     the previous one issued (the rotated token was stored), and the mail
//     and UIDLs are unchanged;
//  2. popbridge is SIGKILLed in the middle of a refresh, at one of two
//     moments: after the provider rotated the token but before its answer
//     was written (the answer is lost), or right after the answer was
//     written (popbridge may or may not have stored it). popbridge starts
//     again on the same state file.
//
// With grace rotation (Microsoft: the old refresh token stays valid until
// the new one has been used) the next login succeeds with byte-identical
// mail and the same UIDLs. With strict rotation, a lost answer loses the
// grant: the next login gets -ERR [AUTH] and `account list` shows
// reconsent-needed (docs/accounts.md, "Rotation and revocation").
func TestRotatedTokenSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	for _, tc := range []struct {
		rot      oauthtest.Rotation
		answered bool // kill after the answer was written
	}{
		{oauthtest.RotateGrace, false},
		{oauthtest.RotateGrace, true},
		{oauthtest.RotateStrict, false},
	} {
		name := fmt.Sprintf("%s/kill-%s-answer", tc.rot, map[bool]string{false: "before", true: "after"}[tc.answered])
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rotationKillScenario(t, bin, tc.rot, tc.answered)
		})
	}
}

func rotationKillScenario(t *testing.T, bin string, rot oauthtest.Rotation, killAnswered bool) {
	e := newOAuthServeEnv(t, oauthtest.Options{Rotation: rot, AutoApprove: oauthtest.User}, "device", "")
	pw := e.enroll(t, "")
	user := oauthtest.User + "#rot"
	p := e.fake.Provider

	s := startServe(t, bin, e.cfg)
	uidls := e.readAll(t, s.addr, user, pw)
	if n := len(e.rotations()); n != 0 {
		t.Fatalf("%d refreshes before any token expired", n)
	}

	// A refresh, then a clean restart, then another refresh: the second
	// redeems what the first issued.
	p.ExpireAccessTokens(oauthtest.User)
	if got := e.readAll(t, s.addr, user, pw); !slices.Equal(got, uidls) {
		t.Errorf("UIDLs after the first refresh %q, want %q", got, uidls)
	}
	s.stop(t)
	s = startServe(t, bin, e.cfg)
	p.ExpireAccessTokens(oauthtest.User)
	if got := e.readAll(t, s.addr, user, pw); !slices.Equal(got, uidls) {
		t.Errorf("UIDLs after the restart %q, want %q", got, uidls)
	}
	rs := e.rotations()
	if len(rs) != 2 || rs[0].new == "" || rs[1].old != rs[0].new {
		t.Fatalf("refreshes %+v: want two, the second redeeming the token the first issued", rs)
	}

	// SIGKILL in the middle of the third refresh.
	reached := make(chan rotation, 1)
	killed := make(chan struct{})
	e.hook(func(r rotation, answered bool) {
		if answered != killAnswered {
			return
		}
		reached <- r
		<-killed
	})
	p.ExpireAccessTokens(oauthtest.User)
	c := dialKillPOP(t, s.addr)
	c.ok("USER " + user)
	c.send("PASS " + pw)
	var r3 rotation
	select {
	case r3 = <-reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the login did not refresh the grant")
	}
	s.kill(t)
	e.hook(nil)
	close(killed)
	if r3.old != rs[1].new {
		t.Errorf("the third refresh redeemed %q, want %q (the second's)", r3.old, rs[1].new)
	}
	// Killed after the answer, popbridge may have finished the login
	// first; before it, it cannot have.
	if l, err := c.r.ReadString('\n'); err == nil && !killAnswered {
		t.Errorf("the POP3 session answered PASS (%q) although popbridge was killed before the refresh was answered", l)
	}

	s = startServe(t, bin, e.cfg)
	if rot == oauthtest.RotateStrict {
		// The answer was lost: the stored refresh token is the one the
		// provider retired when it rotated.
		c := dialKillPOP(t, s.addr)
		c.ok("USER " + user)
		c.send("PASS " + pw)
		if l := c.line(); !strings.HasPrefix(l, "-ERR [AUTH] the upstream authorization of this account was revoked") {
			t.Errorf("PASS after the lost rotation: %q, want -ERR [AUTH] ... re-consent", l)
		}
		s.stop(t)
		out, err := e.account(t, "", "list")
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(oauthtest.User)+` .* reconsent-needed `).MatchString(out) ||
			!strings.Contains(out, "re-consent needed since") {
			t.Errorf("account list does not show the lost grant:\n%s", out)
		}
		if p.RefreshTokenValid(rs[1].new) {
			t.Error("strict rotation: the redeemed refresh token is still valid")
		}
		return
	}
	if got := e.readAll(t, s.addr, user, pw); !slices.Equal(got, uidls) {
		t.Errorf("UIDLs after the SIGKILL %q, want %q", got, uidls)
	}
	all := e.rotations()
	switch {
	case killAnswered && len(all) == 3:
		// popbridge stored the third refresh before it died, and its
		// access token is still valid: no refresh was needed.
	case len(all) == 4 && (all[3].old == r3.old || all[3].old == r3.new):
		// Redeemed the token the lost answer rotated away (grace), or
		// the one it brought, stored before the kill.
	default:
		t.Errorf("refreshes after the restart %+v (the killed one %+v)", all[3:], r3)
	}
	if !killAnswered && len(all) == 4 && all[3].old != r3.old {
		t.Errorf("the answer was never written, yet the next refresh redeemed %q", all[3].old)
	}
	s.stop(t)
}
