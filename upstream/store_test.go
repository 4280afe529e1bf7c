package upstream_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

func flagged(msgs []imaptest.Message, f imap.Flag) map[uint32]bool {
	out := map[uint32]bool{}
	for _, m := range msgs {
		if m.HasFlag(f) {
			out[m.UID] = true
		}
	}
	return out
}

func uidSet(msgs []imaptest.Message) map[uint32]bool {
	out := map[uint32]bool{}
	for _, m := range msgs {
		out[m.UID] = true
	}
	return out
}

// noBareExpunge fails unless every command is a UID command or harmless.
func checkCommandsSafe(t *testing.T, s *imaptest.MemServer) {
	t.Helper()
	for _, c := range s.Commands() {
		switch c.Name {
		case "EXPUNGE", "CLOSE", "STORE", "COPY", "MOVE", "FETCH", "SEARCH":
			t.Errorf("sent %q: only UID commands and no EXPUNGE/CLOSE allowed", c.Line)
		}
		if c.Size > 8192 {
			t.Errorf("sent a command of %d octets: %.80s...", c.Size, c.Line)
		}
	}
}

func TestAddFlagsChunked(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		// 3000 scattered UIDs need several commands. A real server stores
		// about 250 messages a second: it gets fewer (one command), and the
		// chunking is checked on the MemServer's recorder.
		n := 6000
		if u.Mem == nil {
			n = 1000
		}
		raws := make([][]byte, n)
		for i := range raws {
			raws[i] = []byte("Subject: x\r\n\r\nx\r\n")
		}
		all := u.AppendMany(u.Mailbox, raws)
		var odd []uint32
		for i, uid := range all {
			if i%2 == 0 {
				odd = append(odd, uid)
			}
		}
		c, _ := open(t, u)
		if err := c.AddFlags(t.Context(), odd, []string{`\Seen`, "$PopBridgeHidden"}); err != nil {
			t.Fatalf("AddFlags: %v", err)
		}
		msgs := u.Messages(u.Mailbox)
		seen := flagged(msgs, imap.FlagSeen)
		kw := flagged(msgs, "$PopBridgeHidden")
		for i, uid := range all {
			want := i%2 == 0
			if seen[uid] != want || kw[uid] != want {
				t.Fatalf("UID %d: \\Seen %v, keyword %v, want %v", uid, seen[uid], kw[uid], want)
			}
		}
		if u.Mem != nil {
			stores := u.Mem.CommandsNamed("UID STORE")
			if len(stores) < 2 {
				t.Errorf("3000 scattered UIDs went out in %d UID STORE", len(stores))
			}
			for _, s := range stores {
				if s.Size > 8000 {
					t.Errorf("UID STORE of %d octets", s.Size)
				}
				if !strings.Contains(s.Args, "+FLAGS.SILENT") {
					t.Errorf("UID STORE %.60s... is not +FLAGS.SILENT", s.Args)
				}
			}
			checkCommandsSafe(t, u.Mem)
		}
	})
}

func TestAddFlagsInvalid(t *testing.T) {
	u := imaptest.Mem(t)
	uid := u.Append(u.Mailbox, message(1, ""))
	c, _ := open(t, u)
	u.Mem.ResetCommands()
	for _, f := range []string{"", "has space", "paren(", `\`, "quo\"te", "star*"} {
		wantKind(t, c.AddFlags(t.Context(), []uint32{uid}, []string{f}), upstream.KindPerm)
	}
	if cmds := u.Mem.CommandsNamed("UID STORE"); len(cmds) != 0 {
		t.Errorf("sent %v for invalid flags", cmds)
	}
	if err := c.AddFlags(t.Context(), nil, []string{`\Seen`}); err != nil {
		t.Errorf("AddFlags without UIDs: %v", err)
	}
}

func TestAddFlagsFails(t *testing.T) {
	u := imaptest.Mem(t)
	uid := u.Append(u.Mailbox, message(1, ""))
	c, _ := open(t, u)
	u.Mem.Fail("STORE", imaptest.ErrServerBug)
	wantKind(t, c.AddFlags(t.Context(), []uint32{uid}, []string{`\Seen`}), upstream.KindTemp)
	u.Mem.Fail("STORE", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: "read-only"})
	wantKind(t, c.AddFlags(t.Context(), []uint32{uid}, []string{`\Seen`}), upstream.KindPerm)
}

// TestExpungeOnlyOurs: a message another client marked \Deleted stays.
func TestExpungeOnlyOurs(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		var uids []uint32
		for i := 1; i <= 5; i++ {
			uids = append(uids, u.Append(u.Mailbox, message(i, "")))
		}
		u.AddFlags(u.Mailbox, uids[3], imap.FlagDeleted) // someone else's
		c, _ := open(t, u)
		if err := c.Expunge(t.Context(), []uint32{uids[0], uids[2]}); err != nil {
			t.Fatalf("Expunge: %v", err)
		}
		msgs := u.Messages(u.Mailbox)
		left := uidSet(msgs)
		if left[uids[0]] || left[uids[2]] || !left[uids[1]] || !left[uids[3]] || !left[uids[4]] {
			t.Errorf("after Expunge(%d, %d): %v", uids[0], uids[2], left)
		}
		if !flagged(msgs, imap.FlagDeleted)[uids[3]] {
			t.Errorf("the other client's \\Deleted mark on UID %d is gone", uids[3])
		}
		if u.Mem != nil {
			checkCommandsSafe(t, u.Mem)
			if n := len(u.Mem.CommandsNamed("UID EXPUNGE")); n != 1 {
				t.Errorf("%d UID EXPUNGE, want 1", n)
			}
		}
		// Expunging what is already gone is fine (a replayed commit).
		if err := c.Expunge(t.Context(), []uint32{uids[0]}); err != nil {
			t.Errorf("Expunge of a gone UID: %v", err)
		}
	})
}

func TestExpungeChunked(t *testing.T) {
	u := imaptest.Mem(t)
	var even []uint32
	for i := 1; i <= 4000; i++ {
		uid := u.Append(u.Mailbox, []byte("Subject: x\r\n\r\nx\r\n"))
		if i%2 == 0 {
			even = append(even, uid)
		}
	}
	c, _ := open(t, u)
	if err := c.Expunge(t.Context(), even); err != nil {
		t.Fatal(err)
	}
	if got := len(u.Messages(u.Mailbox)); got != 2000 {
		t.Errorf("%d messages left, want 2000", got)
	}
	if n := len(u.Mem.CommandsNamed("UID EXPUNGE")); n < 2 {
		t.Errorf("%d UID EXPUNGE for 2000 scattered UIDs", n)
	}
	checkCommandsSafe(t, u.Mem)
}

func TestExpungeRefusedWithoutUIDPlus(t *testing.T) {
	u := imaptest.Mem(t, imaptest.WithCaps(imap.CapIMAP4rev1))
	uid := u.Append(u.Mailbox, message(1, ""))
	c, _ := open(t, u)
	if c.HasUIDPlus() {
		t.Fatal("HasUIDPlus with IMAP4rev1 only")
	}
	u.Mem.ResetCommands()
	wantKind(t, c.Expunge(t.Context(), []uint32{uid}), upstream.KindPerm)
	if cmds := u.Mem.Commands(); len(cmds) != 0 {
		t.Errorf("sent %v although refused", cmds)
	}
	if msgs := u.Messages(u.Mailbox); len(msgs) != 1 || msgs[0].HasFlag(imap.FlagDeleted) {
		t.Errorf("message touched: %+v", msgs)
	}
}

func TestExpungeFails(t *testing.T) {
	u := imaptest.Mem(t)
	uid := u.Append(u.Mailbox, message(1, ""))
	c, _ := open(t, u)
	u.Mem.Fail("EXPUNGE", imaptest.ErrUnavailable)
	wantKind(t, c.Expunge(t.Context(), []uint32{uid}), upstream.KindTemp)
	u.Mem.Fail("EXPUNGE", nil)
	if err := c.Expunge(t.Context(), []uint32{uid}); err != nil {
		t.Errorf("Expunge after the fault cleared: %v", err)
	}
	if msgs := u.Messages(u.Mailbox); len(msgs) != 0 {
		t.Errorf("messages left: %+v", msgs)
	}
}

func TestMove(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		trash := u.NewMailbox("Trash")
		var uids []uint32
		for i := 1; i <= 4; i++ {
			uids = append(uids, u.Append(u.Mailbox, message(i, "")))
		}
		c, _ := open(t, u)
		if err := c.Move(t.Context(), []uint32{uids[1], uids[3]}, trash); err != nil {
			t.Fatalf("Move: %v", err)
		}
		left := uidSet(u.Messages(u.Mailbox))
		if !left[uids[0]] || left[uids[1]] || !left[uids[2]] || left[uids[3]] {
			t.Errorf("source after Move: %v", left)
		}
		moved := u.Messages(trash)
		if len(moved) != 2 || string(moved[0].Raw) != string(message(2, "")) || string(moved[1].Raw) != string(message(4, "")) {
			t.Errorf("Trash after Move: %d messages", len(moved))
		}
		if u.Mem != nil {
			if n := len(u.Mem.CommandsNamed("UID MOVE")); n != 1 {
				t.Errorf("%d UID MOVE, want 1", n)
			}
			if n := len(u.Mem.CommandsNamed("UID COPY", "UID EXPUNGE")); n != 0 {
				t.Errorf("COPY/EXPUNGE sent although MOVE is offered")
			}
			checkCommandsSafe(t, u.Mem)
		}

		err := c.Move(t.Context(), []uint32{uids[0]}, u.Mailbox+"-missing")
		wantKind(t, err, upstream.KindPerm)
	})
}

// TestMoveFallback: with UIDPLUS but not MOVE, Move copies, flags and
// UID EXPUNGEs exactly the moved messages.
func TestMoveFallback(t *testing.T) {
	u := imaptest.Mem(t, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus))
	trash := u.NewMailbox("Trash")
	var uids []uint32
	for i := 1; i <= 4; i++ {
		uids = append(uids, u.Append(u.Mailbox, message(i, "")))
	}
	u.AddFlags(u.Mailbox, uids[2], imap.FlagDeleted) // someone else's
	c, _ := open(t, u)
	if c.HasMove() || !c.HasUIDPlus() {
		t.Fatalf("HasMove %v HasUIDPlus %v", c.HasMove(), c.HasUIDPlus())
	}
	if err := c.Move(t.Context(), []uint32{uids[0], uids[1]}, trash); err != nil {
		t.Fatalf("Move: %v", err)
	}
	msgs := u.Messages(u.Mailbox)
	left := uidSet(msgs)
	if left[uids[0]] || left[uids[1]] || !left[uids[2]] || !left[uids[3]] {
		t.Errorf("source after Move: %v", left)
	}
	if !flagged(msgs, imap.FlagDeleted)[uids[2]] {
		t.Error("the other client's \\Deleted message changed")
	}
	if got := u.Messages(trash); len(got) != 2 {
		t.Errorf("Trash holds %d messages, want 2", len(got))
	}
	var names []string
	for _, cmd := range u.Mem.Commands() {
		if cmd.Name != "LOGIN" && cmd.Name != "CAPABILITY" && cmd.Name != "SELECT" && cmd.Name != "LOGOUT" {
			names = append(names, cmd.Name+" "+cmd.Set())
		}
	}
	if got, want := strings.Join(names, "; "), "UID COPY 1:2; UID STORE 1:2; UID EXPUNGE 1:2"; got != want {
		t.Errorf("commands %q, want %q", got, want)
	}
	checkCommandsSafe(t, u.Mem)

	u.Mem.Fail("COPY", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "no such mailbox"})
	wantKind(t, c.Move(t.Context(), []uint32{uids[3]}, "Nowhere"), upstream.KindPerm)
	if !uidSet(u.Messages(u.Mailbox))[uids[3]] {
		t.Error("a failed COPY still removed the message")
	}
}

func TestMoveRefused(t *testing.T) {
	u := imaptest.Mem(t, imaptest.WithCaps(imap.CapIMAP4rev1))
	trash := u.NewMailbox("Trash")
	uid := u.Append(u.Mailbox, message(1, ""))
	c, _ := open(t, u)
	u.Mem.ResetCommands()
	wantKind(t, c.Move(t.Context(), []uint32{uid}, trash), upstream.KindPerm)
	if cmds := u.Mem.Commands(); len(cmds) != 0 {
		t.Errorf("sent %v although refused", cmds)
	}
}

func TestMoveFails(t *testing.T) {
	u := imaptest.Mem(t)
	trash := u.NewMailbox("Trash")
	uid := u.Append(u.Mailbox, message(1, ""))
	c, _ := open(t, u)
	u.Mem.Fail("MOVE", imaptest.ErrUnavailable)
	wantKind(t, c.Move(t.Context(), []uint32{uid}, trash), upstream.KindTemp)
	if len(u.Messages(u.Mailbox)) != 1 {
		t.Error("message left the mailbox although MOVE failed")
	}
}

func TestMoveChunked(t *testing.T) {
	u := imaptest.Mem(t)
	trash := u.NewMailbox("Trash")
	var odd []uint32
	for i := 1; i <= 4000; i++ {
		uid := u.Append(u.Mailbox, []byte("Subject: x\r\n\r\nx\r\n"))
		if i%2 == 1 {
			odd = append(odd, uid)
		}
	}
	c, _ := open(t, u)
	if err := c.Move(t.Context(), odd, trash); err != nil {
		t.Fatal(err)
	}
	if n := len(u.Mem.CommandsNamed("UID MOVE")); n < 2 {
		t.Errorf("%d UID MOVE for 2000 scattered UIDs", n)
	}
	if got := len(u.Messages(trash)); got != 2000 {
		t.Errorf("Trash holds %d, want 2000", got)
	}
	checkCommandsSafe(t, u.Mem)
}

func TestSpecialUse(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		trash := u.NewMailbox("Bin", imap.MailboxAttrTrash)
		u.NewMailbox("Other")
		c := dial(t, u)
		got, err := c.SpecialUse(t.Context(), imap.MailboxAttrTrash)
		if err != nil || got != trash {
			t.Errorf("SpecialUse(\\Trash) = %q, %v; want %q", got, err, trash)
		}
		if u.Mem != nil {
			got, err = c.SpecialUse(t.Context(), imap.MailboxAttrJunk)
			if err != nil || got != "" {
				t.Errorf("SpecialUse(\\Junk) = %q, %v; want none", got, err)
			}
		}
	})
}

func TestSpecialUseReturnOption(t *testing.T) {
	for _, tc := range []struct {
		caps       []imap.Cap
		wantReturn bool
	}{
		{imaptest.DefaultCaps, false},
		{append([]imap.Cap{imap.CapSpecialUse}, imaptest.DefaultCaps...), true},
		{[]imap.Cap{imap.CapIMAP4rev1, imap.CapSpecialUse}, false}, // no LIST-EXTENDED
	} {
		u := imaptest.Mem(t, imaptest.WithCaps(tc.caps...))
		u.Mem.Create("Deleted Items", imap.MailboxAttrTrash)
		c := dial(t, u)
		got, err := c.SpecialUse(t.Context(), imap.MailboxAttrTrash)
		if err != nil || got != "Deleted Items" {
			t.Errorf("caps %v: SpecialUse = %q, %v", tc.caps, got, err)
		}
		lists := u.Mem.CommandsNamed("LIST")
		if len(lists) != 1 || strings.Contains(lists[0].Args, "RETURN (SPECIAL-USE)") != tc.wantReturn {
			t.Errorf("caps %v: sent %v", tc.caps, lists)
		}
	}
}
