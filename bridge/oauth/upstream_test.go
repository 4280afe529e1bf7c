package oauth_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/internal/oauthtest"
	"github.com/popbridge/popbridge/upstream"
)

func dialUpstream(t *testing.T, e *oauthtest.Env) *upstream.Conn {
	t.Helper()
	conn, err := upstream.Dial(t.Context(), upstream.Config{Address: e.IMAP.Addr(), Security: upstream.SecurityNone, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readMailbox selects INBOX and returns every message's bytes.
func readMailbox(t *testing.T, conn *upstream.Conn) [][]byte {
	t.Helper()
	ctx := t.Context()
	if _, err := conn.Select(ctx, "INBOX"); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	var uids []uint32
	if err := conn.List(ctx, 1, false, func(m upstream.Msg) error { uids = append(uids, m.UID); return nil }); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, uid := range uids {
		var b bytes.Buffer
		if _, err := conn.WriteMessage(ctx, uid, &b); err != nil {
			t.Fatal(err)
		}
		out = append(out, b.Bytes())
	}
	return out
}

func sameMessages(t *testing.T, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d messages, want %d", what, len(got), len(want))
		return
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("%s: message %d is %q, want %q", what, i+1, got[i], want[i])
		}
	}
}

// The upstream side through upstream.Dial and the XOAUTH2 client: a valid
// token opens the user's mailbox (same bytes as seeded), an expired one
// gets NO [AUTHENTICATIONFAILED] (KindAuth, with the error challenge
// answered so the connection stays usable), a revoked one too.
func TestUpstreamXOAuth2(t *testing.T) {
	clock := oauthtest.NewClock(t0)
	e := oauthtest.Start(t, oauthtest.Options{Now: clock.Now, AccessTokenLifetime: 10 * time.Minute})
	seeded, err := e.Seed(oauthtest.User, 3)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, genericConfig(e, oauth.FlowAuthCode), clock)
	g := enroll(t, e, c)
	ctx := t.Context()

	// Expired: refused, and the same connection takes the next login.
	clock.Advance(10 * time.Minute)
	conn := dialUpstream(t, e)
	expired := upstream.NewXOAuth2Client(oauthtest.User, g.AccessToken)
	err = conn.Authenticate(ctx, expired)
	if upstream.KindOf(err) != upstream.KindAuth {
		t.Fatalf("expired token: %v (kind %v); want KindAuth", err, upstream.KindOf(err))
	}
	if !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") && !strings.Contains(err.Error(), "Authentication failed") {
		t.Errorf("expired token: %v", err)
	}
	if expired.Failure() == nil {
		t.Error("the server's error challenge was not seen")
	}

	fresh, err := c.Refresh(ctx, g.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Authenticate(ctx, upstream.NewXOAuth2Client(oauthtest.User, fresh.AccessToken)); err != nil {
		t.Fatalf("valid token on the same connection: %v", err)
	}
	sameMessages(t, oauthtest.User, readMailbox(t, conn), seeded)

	// Revoked: refused.
	e.Provider.Revoke(oauthtest.User)
	conn2 := dialUpstream(t, e)
	if err := conn2.Authenticate(ctx, upstream.NewXOAuth2Client(oauthtest.User, fresh.AccessToken)); upstream.KindOf(err) != upstream.KindAuth {
		t.Errorf("revoked token: %v; want KindAuth", err)
	}
	// A password is refused as well.
	if err := dialUpstream(t, e).Login(ctx, oauthtest.User, "password"); upstream.KindOf(err) != upstream.KindAuth {
		t.Errorf("LOGIN: %v; want KindAuth", err)
	}
}

// A shared mailbox: XOAUTH2 names it as user= with the token of a user
// who has access (or of the app); another user's token is refused.
func TestUpstreamSharedMailbox(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	shared, err := e.Seed(oauthtest.SharedMailbox, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Seed(oauthtest.User, 1); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	c := newClient(t, genericConfig(e, oauth.FlowAuthCode), nil)
	alice := enroll(t, e, c)

	conn := dialUpstream(t, e)
	if err := conn.Authenticate(ctx, upstream.NewXOAuth2Client(oauthtest.SharedMailbox, alice.AccessToken)); err != nil {
		t.Fatalf("shared mailbox with a delegate's token: %v", err)
	}
	sameMessages(t, "shared mailbox", readMailbox(t, conn), shared)

	bob := e.Provider.IssueAccessToken(oauthtest.OtherUser, oauthtest.IMAPScope)
	if err := dialUpstream(t, e).Authenticate(ctx, upstream.NewXOAuth2Client(oauthtest.SharedMailbox, bob)); upstream.KindOf(err) != upstream.KindAuth {
		t.Errorf("shared mailbox with a non-delegate's token: %v; want KindAuth", err)
	}

	app := newClient(t, appConfig(t, e, oauthtest.AppSecret), nil)
	appLogin := app.IMAPLogin(oauthtest.SharedMailbox)
	conn = dialUpstream(t, e)
	if err := appLogin.Authenticate(ctx, conn, oauth.NewAppKeeper(app)); err != nil {
		t.Fatalf("shared mailbox with the app's token: %v", err)
	}
	sameMessages(t, "shared mailbox (app)", readMailbox(t, conn), shared)
	if err := app.IMAPLogin(oauthtest.OtherUser).Authenticate(ctx, dialUpstream(t, e), oauth.NewAppKeeper(app)); upstream.KindOf(err) != upstream.KindAuth {
		t.Errorf("the app on a mailbox it may not open: %v; want KindAuth", err)
	}
}

// countingSource counts the calls of a TokenSource.
type countingSource struct {
	oauth.TokenSource
	fresh, forced int
}

func (s *countingSource) Fresh(ctx context.Context) (string, error) {
	s.fresh++
	return s.TokenSource.Fresh(ctx)
}

func (s *countingSource) ForceRefresh(ctx context.Context, rejected string) (string, error) {
	s.forced++
	return s.TokenSource.ForceRefresh(ctx, rejected)
}

// IMAPLogin.Authenticate: a token the keeper thinks fresh but the server
// refuses (it expired early) is refreshed once and the login retried on
// the same connection; a revoked grant ends in ErrReconsent; OAUTHBEARER
// works the same way.
func TestIMAPLoginForcedRefresh(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateGrace})
	seeded, err := e.Seed(oauthtest.User, 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	c := newClient(t, genericConfig(e, oauth.FlowAuthCode), nil)
	store := newStore(enroll(t, e, c))
	src := &countingSource{TokenSource: oauth.NewKeeper(c, store)}
	login := c.IMAPLogin(oauthtest.User)
	if login.Mechanism != "XOAUTH2" || login.Host != "127.0.0.1" || login.Port == 0 {
		t.Errorf("IMAPLogin = %+v", login)
	}

	if n := e.Provider.ExpireAccessTokens(oauthtest.User); n != 1 {
		t.Fatalf("expired %d tokens, want 1", n)
	}
	conn := dialUpstream(t, e)
	if err := login.Authenticate(ctx, conn, src); err != nil {
		t.Fatalf("login after a forced refresh: %v", err)
	}
	sameMessages(t, oauthtest.User, readMailbox(t, conn), seeded)
	if src.fresh != 1 || src.forced != 1 || e.Provider.Stats().Refreshes != 1 {
		t.Errorf("Fresh %d, ForceRefresh %d, refreshes %d; want 1, 1, 1", src.fresh, src.forced, e.Provider.Stats().Refreshes)
	}
	attempts := e.IMAP.Attempts()
	if len(attempts) != 2 || attempts[0].OK || !attempts[1].OK {
		t.Errorf("attempts %+v: want a refused one, then an accepted one", attempts)
	}

	bearer := login
	bearer.Mechanism = "OAUTHBEARER"
	if err := bearer.Authenticate(ctx, dialUpstream(t, e), src); err != nil {
		t.Errorf("OAUTHBEARER: %v", err)
	}

	e.Provider.Revoke(oauthtest.User)
	err = login.Authenticate(ctx, dialUpstream(t, e), src)
	wantIs(t, err, oauth.ErrReconsent)
	if src.forced != 2 {
		t.Errorf("ForceRefresh called %d times in all, want 2", src.forced)
	}
}
