package bridge

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/oauthtest"
)

// TestEnrolledUsesItsUpstreamTimeout: an enrolled account's maildrop
// works to the timeout of its [[upstreams]] entry, not to [upstream]'s.
// With [upstream].timeout one hour and the entry's one second, a QUIT whose
// UPDATE finds the mailbox's update lock held (another device's UPDATE)
// gives up after two of the entry's timeouts: QUIT answers, the intent
// stays stored and the next login carries it out. (With [upstream]'s
// timeout it would wait two hours.)
func TestEnrolledUsesItsUpstreamTimeout(t *testing.T) {
	e := newOAuthEnv(t, oauthtest.Options{RequireOfflineAccess: true}, func(c *Config) {
		c.Upstream.Timeout = time.Hour
		c.Upstreams[0].Timeout = time.Second
		c.Delete.Policy = PolicyFlag
	})
	e.start()
	pw := e.enrollDevice(oauthtest.User, "fake", "")
	want := e.mailOf(oauthtest.User)
	uidls := e.readAll(oauthtest.User, pw, want)

	release, err := e.st.LockUpdate(context.Background(), MailboxKey("fake", oauthtest.User, "INBOX"))
	if err != nil {
		t.Fatal(err)
	}
	c := dialPOP(t, e.addr)
	c.login(oauthtest.User, pw)
	c.ok("DELE 1")
	q := c.cmd("QUIT") // waits for the lock: 2 × the upstream's timeout
	release()
	if !strings.HasPrefix(q, "-ERR [SYS/TEMP]") || !strings.Contains(q, "retried at the next login") {
		t.Errorf("QUIT with the update lock held: %q, want -ERR [SYS/TEMP] ... retried at the next login", q)
	}

	// The next login finishes the stored UPDATE: message 1 is flagged
	// deleted upstream and no longer listed; the others keep their UIDLs.
	c = dialPOP(t, e.addr)
	c.login(oauthtest.User, pw)
	got := c.uidls()
	if len(got) != 2 || got[0] != uidls[1] || got[1] != uidls[2] {
		t.Errorf("after the replay UIDL lists %q, want %q", got, uidls[1:])
	}
	c.quit()
}
