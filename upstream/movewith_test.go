package upstream_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// TestMoveWithCopied: in the COPY fallback, UIDs an earlier attempt copied
// are not copied again, only flagged and expunged; OnCopy is told, after
// each COPY and before its STORE, which source UIDs the server copied.
func TestMoveWithCopied(t *testing.T) {
	u := imaptest.Mem(t, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus))
	trash := u.NewMailbox("Trash")
	var uids []uint32
	for i := 1; i <= 4; i++ {
		uids = append(uids, u.Append(u.Mailbox, message(i, "")))
	}
	// An earlier attempt copied message 1 and was cut off.
	u.Append(trash, message(1, ""))
	c, _ := open(t, u)
	u.Mem.ResetCommands()
	var told [][]uint32
	var storesBefore []int
	err := c.MoveWith(t.Context(), []uint32{uids[0], uids[1], uids[3]}, trash, &upstream.MoveOptions{
		Copied: []uint32{uids[0]},
		OnCopy: func(src []uint32) {
			told = append(told, slices.Clone(src))
			storesBefore = append(storesBefore, len(u.Mem.CommandsNamed("UID STORE")))
		},
	})
	if err != nil {
		t.Fatalf("MoveWith: %v", err)
	}
	if want := [][]uint32{{uids[1], uids[3]}}; !slices.EqualFunc(told, want, slices.Equal) {
		t.Errorf("OnCopy was told %v, want %v", told, want)
	}
	if !slices.Equal(storesBefore, []int{0}) {
		t.Errorf("UID STOREs before OnCopy: %v, want none", storesBefore)
	}
	var names []string
	for _, cmd := range u.Mem.Commands() {
		names = append(names, cmd.Name+" "+cmd.Set())
	}
	if got, want := strings.Join(names, "; "), "UID COPY 2,4; UID STORE 1:2,4; UID EXPUNGE 1:2,4"; got != want {
		t.Errorf("commands %q, want %q", got, want)
	}
	if left := uidSet(u.Messages(u.Mailbox)); len(left) != 1 || !left[uids[2]] {
		t.Errorf("INBOX after MoveWith: %v, want only UID %d", left, uids[2])
	}
	counts := map[string]int{}
	for _, m := range u.Messages(trash) {
		for _, l := range strings.Split(string(m.Raw), "\r\n") {
			if strings.HasPrefix(l, "Message-ID: ") {
				counts[l]++
			}
		}
	}
	for _, n := range []string{"1", "2", "4"} {
		if got := counts["Message-ID: <"+n+"@test>"]; got != 1 {
			t.Errorf("message %s is %d times in Trash, want 1", n, got)
		}
	}
	checkCommandsSafe(t, u.Mem)

	// Everything copied already: no COPY at all.
	uid := u.Append(u.Mailbox, message(5, ""))
	u.Mem.ResetCommands()
	if err := c.MoveWith(t.Context(), []uint32{uid}, trash, &upstream.MoveOptions{Copied: []uint32{uid}, OnCopy: func([]uint32) { t.Error("OnCopy without a COPY") }}); err != nil {
		t.Fatal(err)
	}
	if n := len(u.Mem.CommandsNamed("UID COPY")); n != 0 {
		t.Errorf("%d UID COPY for messages copied already", n)
	}
}

// TestSearchUIDs: UID SEARCH UID returns the UIDs of the set that are still
// in the mailbox, whatever another session expunged meanwhile.
func TestSearchUIDs(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		var uids []uint32
		for i := 1; i <= 5; i++ {
			uids = append(uids, u.Append(u.Mailbox, message(i, "")))
		}
		c, _ := open(t, u)
		other, _ := open(t, u)
		if err := other.Expunge(t.Context(), []uint32{uids[1], uids[3]}); err != nil {
			t.Fatal(err)
		}
		got, err := c.SearchUIDs(t.Context(), []uint32{uids[0], uids[1], uids[3], uids[4], uids[4] + 100})
		if err != nil {
			t.Fatal(err)
		}
		if want := []uint32{uids[0], uids[4]}; !slices.Equal(got, want) {
			t.Errorf("SearchUIDs = %v, want %v", got, want)
		}
		if got, err := c.SearchUIDs(t.Context(), nil); err != nil || len(got) != 0 {
			t.Errorf("SearchUIDs(nil) = %v %v", got, err)
		}
	})
}
