package imaptest_test

import (
	"bytes"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// TestHideCaps: behind HideCaps a client sees the server's capabilities
// without MOVE, before and after login, and message bytes that look like a
// capability list pass unchanged.
func TestHideCaps(t *testing.T) {
	s := imaptest.NewMemServer(t, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus, imap.CapMove))
	raw := []byte("Subject: caps\r\n\r\n* CAPABILITY IMAP4rev1 MOVE\r\n* OK [CAPABILITY MOVE] x\r\n")
	uid := s.Append("INBOX", raw)
	c, err := imapclient.DialInsecure(imaptest.HideCaps(t, s.Addr, "move"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	if caps := c.Caps(); caps.Has(imap.CapMove) || !caps.Has(imap.CapIMAP4rev1) {
		t.Errorf("before login: %v, want IMAP4rev1 without MOVE", caps)
	}
	if err := c.Login(s.User, s.Pass).Wait(); err != nil {
		t.Fatal(err)
	}
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if caps.Has(imap.CapMove) || !caps.Has(imap.CapUIDPlus) {
		t.Errorf("after login: %v, want UIDPLUS without MOVE", caps)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.UIDSetNum(imap.UID(uid)), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch: %v %v", msgs, err)
	}
	if got := msgs[0].FindBodySection(&imap.FetchItemBodySection{Peek: true}); !bytes.Equal(got, raw) {
		t.Errorf("the message changed on the way: %q", got)
	}
}
