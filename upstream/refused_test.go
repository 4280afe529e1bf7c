package upstream_test

import (
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// TestExpungeRefusedTakesBackDeleted: a UID EXPUNGE refused (here with
// NO [NOPERM], or a temporary NO) leaves no \Deleted that Expunge set: a
// later EXPUNGE by another client cannot remove those messages. A \Deleted
// the message carried before stays. Several chunks: the refused chunk is
// restored whole.
func TestExpungeRefusedTakesBackDeleted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		kind   upstream.Kind
		reason upstream.Reason
		n      int // messages: enough for several chunks when large
	}{
		{"NOPERM", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: "Permission denied"}, upstream.KindPerm, upstream.ReasonPermission, 6},
		{"no-code", &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Permission denied"}, upstream.KindPerm, upstream.ReasonPermission, 6},
		{"UNAVAILABLE", imaptest.ErrUnavailable, upstream.KindTemp, upstream.ReasonUnavailable, 6},
		{"chunked", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: "Permission denied"}, upstream.KindPerm, upstream.ReasonPermission, 4000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := imaptest.Mem(t)
			var uids []uint32
			for i := 1; i <= tc.n; i++ {
				var flags []imap.Flag
				if i%3 == 0 {
					flags = []imap.Flag{imap.FlagDeleted} // set by the user
				}
				uids = append(uids, u.Append(u.Mailbox, message(i, ""), flags...))
			}
			// Every other message, scattered so that a large set takes
			// several commands.
			var del []uint32
			for i, uid := range uids {
				if i%2 == 0 || i%3 == 2 {
					del = append(del, uid)
				}
			}
			before := u.Messages(u.Mailbox)
			c, _ := open(t, u)
			u.Mem.Fail("EXPUNGE", tc.err)
			err := c.Expunge(t.Context(), del)
			wantKind(t, err, tc.kind)
			if got := upstream.ReasonOf(err); got != tc.reason {
				t.Errorf("ReasonOf = %v, want %v", got, tc.reason)
			}
			after := u.Messages(u.Mailbox)
			if len(after) != len(before) {
				t.Fatalf("%d messages left of %d", len(after), len(before))
			}
			for i := range after {
				if got, want := after[i].HasFlag(imap.FlagDeleted), before[i].HasFlag(imap.FlagDeleted); got != want {
					t.Errorf("UID %d: \\Deleted %v after the refused expunge, %v before", after[i].UID, got, want)
				}
			}
			checkCommandsSafe(t, u.Mem)
		})
	}
}
