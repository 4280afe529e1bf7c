package upstream

import (
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// TestThrottled: the answers of throttling servers are ReasonThrottled and
// temporary, at login too (not a wrong password); the suggested wait is
// read from Microsoft's text.
func TestThrottled(t *testing.T) {
	for _, tc := range []struct {
		err  *imap.Error
		ph   phase
		wait time.Duration
	}{
		{&imap.Error{Type: imap.StatusResponseTypeNo, Text: "Request is throttled. Suggested Backoff Time: 120000 milliseconds"}, phaseSelect, 2 * time.Minute},
		{&imap.Error{Type: imap.StatusResponseTypeNo, Code: "THROTTLED", Text: "Account exceeded command or bandwidth limits. (Failure)"}, phaseCommand, 0},
		{&imap.Error{Type: imap.StatusResponseTypeNo, Code: "ALERT", Text: "Too many simultaneous connections. (Failure)"}, phaseLogin, 0},
		{&imap.Error{Type: imap.StatusResponseType("BYE"), Text: "Too many connections, server busy"}, phaseCommand, 0},
	} {
		if r := reasonOf(tc.err); r != ReasonThrottled {
			t.Errorf("%q: reason %v, want throttled", tc.err.Text, r)
		}
		if k := kindOf(tc.err, tc.ph); k != KindTemp {
			t.Errorf("%q: kind %v, want temporary", tc.err.Text, k)
		}
		if w := BackoffHint(wrap("select", tc.err, tc.ph)); w != tc.wait {
			t.Errorf("%q: BackoffHint = %v, want %v", tc.err.Text, w, tc.wait)
		}
	}
	for _, e := range []*imap.Error{
		{Type: imap.StatusResponseTypeNo, Text: "[AUTHENTICATIONFAILED] Invalid credentials"},
		{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "try later"},
	} {
		if r := reasonOf(e); r == ReasonThrottled {
			t.Errorf("%q taken for throttling", e.Text)
		}
	}
}

// TestPermits: keywords need `\*` or to be listed; system flags pass.
func TestPermits(t *testing.T) {
	exchange := []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`}
	for _, tc := range []struct {
		perm []string
		flag string
		want bool
	}{
		{exchange, "$POP3Deleted", false},
		{exchange, `\Seen`, true},
		{[]string{`\*`}, "$POP3Deleted", true},
		{[]string{"$pop3deleted"}, "$POP3Deleted", true},
		{nil, "$POP3Deleted", true},
		{[]string{}, "$POP3Deleted", false},
	} {
		if got := Permits(tc.perm, tc.flag); got != tc.want {
			t.Errorf("Permits(%v, %q) = %v, want %v", tc.perm, tc.flag, got, tc.want)
		}
	}
}
