package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// TestReasonOf: refusals are classified by response code, and a NO without
// one by its text (Cyrus); permission and quota refusals of a command are
// KindPerm, so that a device is not locked out by a retry that cannot work.
func TestReasonOf(t *testing.T) {
	no := func(code imap.ResponseCode, text string) error {
		return fmt.Errorf("wrapped: %w", &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: text})
	}
	for _, tc := range []struct {
		err    error
		ph     phase
		reason Reason
		kind   Kind
	}{
		{no(imap.ResponseCodeNoPerm, "Permission denied"), phaseCommand, ReasonPermission, KindPerm},
		{no("", "Permission denied"), phaseCommand, ReasonPermission, KindPerm},
		{no("", "Mailbox is read-only"), phaseCommand, ReasonPermission, KindPerm},
		{no("", "No ACL right to expunge"), phaseCommand, ReasonPermission, KindPerm},
		{no("", "Oracle says no"), phaseCommand, ReasonOther, KindTemp},
		{no(imap.ResponseCodeOverQuota, "Quota exceeded (mailbox for user is full)"), phaseCommand, ReasonQuota, KindPerm},
		{no("", "Over quota"), phaseCommand, ReasonQuota, KindPerm},
		{no(imap.ResponseCodeOverQuota, "full"), phaseLogin, ReasonQuota, KindPerm},
		{no(imap.ResponseCodeUnavailable, "try later"), phaseCommand, ReasonUnavailable, KindTemp},
		{no(imap.ResponseCodeServerBug, "oops"), phaseCommand, ReasonUnavailable, KindTemp},
		{no(imap.ResponseCodeLimit, "slow down"), phaseCommand, ReasonUnavailable, KindTemp},
		{no(imap.ResponseCodeInUse, "locked"), phaseCommand, ReasonUnavailable, KindTemp},
		{no(imap.ResponseCodeNonExistent, "no such mailbox"), phaseCommand, ReasonOther, KindPerm},
		{no("", "something odd"), phaseCommand, ReasonOther, KindTemp},
		// The text of a NO with a code is the code's business: a
		// temporary code stays temporary whatever the text says.
		{no(imap.ResponseCodeUnavailable, "permission denied for now"), phaseCommand, ReasonUnavailable, KindTemp},
		{&imap.Error{Type: imap.StatusResponseTypeBad, Text: "permission denied"}, phaseCommand, ReasonOther, KindPerm},
		{&imap.Error{Type: imap.StatusResponseTypeBye, Text: "shutting down"}, phaseCommand, ReasonConnection, KindTemp},
		{io.ErrUnexpectedEOF, phaseCommand, ReasonConnection, KindTemp},
	} {
		e := wrap("expunge", tc.err, tc.ph)
		if got := ReasonOf(e); got != tc.reason {
			t.Errorf("ReasonOf(%v) = %v, want %v", tc.err, got, tc.reason)
		}
		if got := KindOf(e); got != tc.kind {
			t.Errorf("KindOf(%v) in phase %v = %v, want %v", tc.err, tc.ph, got, tc.kind)
		}
	}
	if got := ReasonOf(tempError("fetch", "connection closed")); got != ReasonConnection {
		t.Errorf("ReasonOf(tempError) = %v", got)
	}
	if got := ReasonOf(permError("expunge", "no UIDPLUS")); got != ReasonOther {
		t.Errorf("ReasonOf(permError) = %v", got)
	}
	if got := ReasonOf(context.DeadlineExceeded); got != ReasonConnection {
		t.Errorf("ReasonOf(a timeout) = %v", got)
	}
	if got := ReasonOf(nil); got != ReasonOther {
		t.Errorf("ReasonOf(nil) = %v", got)
	}
	if !errors.Is(wrap("x", io.EOF, phaseCommand), io.EOF) {
		t.Error("wrap lost the cause")
	}
}
