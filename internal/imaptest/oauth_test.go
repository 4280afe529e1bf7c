package imaptest_test

import (
	"errors"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/oauthtest"
	"github.com/popbridge/popbridge/upstream"
)

// An OAuth-only MemServer refuses the password to clients, lets a valid
// token for its account in, and keeps its helper (Messages) and
// recorder working.
func TestMemServerWithOAuth(t *testing.T) {
	p := oauthtest.NewProvider(oauthtest.Options{})
	p.AddUser("alice")
	p.AddUser("bob")
	s := imaptest.NewMemServer(t, imaptest.WithOAuth(p))
	uid := s.Append("INBOX", []byte("Subject: x\r\n\r\nbody\r\n"))

	c, err := imapclient.DialInsecure(s.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ie *imap.Error
	if err := c.Login(s.User, s.Pass).Wait(); !errors.As(err, &ie) || ie.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("LOGIN with the right password: %v; want NO [AUTHENTICATIONFAILED]", err)
	}
	bob := p.IssueAccessToken("bob", "")
	if err := c.Authenticate(upstream.NewXOAuth2Client(s.User, bob)); !errors.As(err, &ie) || ie.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("XOAUTH2 with another user's token: %v; want NO [AUTHENTICATIONFAILED]", err)
	}
	if err := c.Authenticate(upstream.NewXOAuth2Client(s.User, p.IssueAccessToken("alice", ""))); err != nil {
		t.Fatalf("XOAUTH2 with alice's token: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if got := s.Messages("INBOX"); len(got) != 1 || got[0].UID != uid {
		t.Errorf("Messages = %+v, want UID %d", got, uid)
	}
	if n := len(s.CommandsNamed("AUTHENTICATE")); n != 2 {
		t.Errorf("%d AUTHENTICATE recorded, want 2", n)
	}
}
