package bridge

import (
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// TestCyrusRefusedUpdate runs the refused UPDATEs of TestRefusedUpdate
// against a real Cyrus IMAP (.ci/cyrus-start), whose refusals carry no
// response code: a user without the "e" right gets "NO Permission denied"
// for UID EXPUNGE and for UID MOVE, and a MOVE into a Trash over its quota
// gets "NO Over quota". QUIT says so with -ERR [SYS/PERM], the mailbox is
// left as it was (the \Deleted popbridge set is taken back, the user's
// stays), nothing stays pending, and the next login lists every message.
func TestCyrusRefusedUpdate(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		inboxRights  string
		trashQuota   bool
		want         string
	}{
		{"expunge/no-expunge-right", PolicyExpunge, "lrswipkxt", false, "permission denied"},
		{"move/no-expunge-right", PolicyMove, "lrswipkxt", false, "permission denied"},
		{"move/trash-over-quota", PolicyMove, "lrswipkxte", true, "over quota"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acc := imaptest.NewCyrusAccount(t)
			up := &upstreamEnv{name: "cyrus", addr: acc.Addr, user: acc.User, pass: acc.Pass, box: acc.Box}
			seed(up, 3)
			up.box.Append("INBOX", message("users", "user's deleted", "x\r\n"), imap.FlagDeleted)
			acc.Admin.SetACL(acc.Inbox, acc.User, tc.inboxRights)
			if tc.trashQuota {
				acc.Admin.SetQuota(acc.Trash, 0)
			}
			before := up.box.Messages("INBOX")
			e := newEnv(t, up, func(c *Config) { c.Delete.Policy = Policy(tc.policy) })

			c := e.session("")
			uidls := c.uidls()
			c.ok("DELE 1")
			c.ok("DELE 4")
			q := c.quit()
			if !strings.HasPrefix(q, "-ERR [SYS/PERM] ") || !strings.Contains(strings.ToLower(q), tc.want) {
				t.Errorf("QUIT = %q, want -ERR [SYS/PERM] saying %q", q, tc.want)
			}
			after := up.box.Messages("INBOX")
			if len(after) != len(before) {
				t.Fatalf("INBOX holds %d messages, want %d", len(after), len(before))
			}
			for i := range after {
				if after[i].UID != before[i].UID || flagString(after[i]) != flagString(before[i]) {
					t.Errorf("message %d: UID %d flags %q, want UID %d flags %q", i+1, after[i].UID, flagString(after[i]), before[i].UID, flagString(before[i]))
				}
			}
			if n := len(up.box.Messages("Trash")); n != 0 {
				t.Errorf("Trash holds %d messages", n)
			}
			if p := pendingOf(t, e, up, ""); p != nil {
				t.Errorf("a refused UPDATE stays pending: %+v", p)
			}
			c = e.session("")
			if got := c.uidls(); strings.Join(got, " ") != strings.Join(uidls, " ") {
				t.Errorf("the next login lists %v, want %v", got, uidls)
			}
			if q := c.quit(); !strings.HasPrefix(q, "+OK") {
				t.Errorf("QUIT without DELE = %q", q)
			}
		})
	}
}
