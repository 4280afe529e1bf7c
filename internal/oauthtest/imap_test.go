package oauthtest_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/oauthtest"
	"github.com/popbridge/popbridge/upstream"
)

func dial(t *testing.T, e *oauthtest.Env) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(e.IMAP.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantAuthFailed(t *testing.T, what string, err error) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Type != imap.StatusResponseTypeNo || ie.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("%s: %v; want NO [AUTHENTICATIONFAILED]", what, err)
	}
}

// Passwords are refused, tokens decide, and each mailbox is its own
// store.
func TestIMAPServerOAuthOnly(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	msgs, err := e.Seed(oauthtest.User, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Seed(oauthtest.SharedMailbox, 5); err != nil {
		t.Fatal(err)
	}

	c := dial(t, e)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"PLAIN", "XOAUTH2", "OAUTHBEARER"} {
		if !caps.Has(imap.AuthCap(m)) {
			t.Errorf("AUTH=%s not offered: %v", m, caps)
		}
	}
	err = c.Login(oauthtest.User, "password").Wait()
	wantAuthFailed(t, "LOGIN", err)
	if err == nil || !strings.Contains(err.Error(), "use OAuth") {
		t.Errorf("LOGIN refusal %v does not say to use OAuth", err)
	}
	wantAuthFailed(t, "AUTHENTICATE PLAIN", c.Authenticate(sasl.NewPlainClient("", oauthtest.User, "password")))

	// Bob's token does not open Alice's mailbox; the connection stays
	// usable after the refusal.
	bob := e.Provider.IssueAccessToken(oauthtest.OtherUser, oauthtest.IMAPScope)
	bad := upstream.NewXOAuth2Client(oauthtest.User, bob)
	wantAuthFailed(t, "XOAUTH2 with another user's token", c.Authenticate(bad))
	if bad.Failure() == nil {
		t.Error("no error challenge before the refusal")
	}

	alice := e.Provider.IssueAccessToken(oauthtest.User, oauthtest.IMAPScope)
	if err := c.Authenticate(upstream.NewOAuthBearerClient(oauthtest.User, alice, "127.0.0.1", 143)); err != nil {
		t.Fatalf("OAUTHBEARER: %v", err)
	}
	sd, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sd.NumMessages != uint32(len(msgs)) {
		t.Errorf("INBOX of %s has %d messages, want %d", oauthtest.User, sd.NumMessages, len(msgs))
	}

	got := e.IMAP.Attempts()
	want := []oauthtest.AuthAttempt{
		{Mechanism: "LOGIN", User: oauthtest.User},
		{Mechanism: "PLAIN"},
		{Mechanism: "XOAUTH2", User: oauthtest.User},
		{Mechanism: "OAUTHBEARER", User: oauthtest.User, OK: true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("attempts %+v, want %+v", got, want)
	}
}
