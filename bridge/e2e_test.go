package bridge

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
)

// message builds an RFC 5322 message with CRLF line ends.
func message(id, subject, body string) []byte {
	return []byte("From: Sender <sender@example.com>\r\nTo: rcpt@example.com\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + id + "@example.com>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n" + body)
}

// seed appends n simple messages to INBOX and returns their bytes.
func seed(up *upstreamEnv, n int) [][]byte {
	var out [][]byte
	for i := 1; i <= n; i++ {
		raw := message(fmt.Sprintf("seed%d", i), fmt.Sprintf("message %d", i), fmt.Sprintf("body of message %d\r\n", i))
		up.box.Append("INBOX", raw)
		out = append(out, raw)
	}
	return out
}

func subjects(msgs []imaptest.Message) []string {
	var s []string
	for _, m := range msgs {
		for _, l := range strings.Split(string(m.Raw), "\r\n") {
			if strings.HasPrefix(l, "Subject: ") {
				s = append(s, strings.TrimPrefix(l, "Subject: "))
			}
		}
	}
	return s
}

func TestRetrExactBytes(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		big := make([]byte, 0, 5<<20+100)
		big = append(big, message("big", "five megabytes", "")...)
		line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
		for i := 0; len(big) < 5<<20; i++ {
			if i%100 == 0 {
				big = append(big, ".a line that starts with a dot\r\n"...)
			}
			big = append(big, line...)
		}
		msgs := [][]byte{
			message("dots", "dots", ".starts with a dot\r\n..two dots\r\n.\r\n. space\r\nend\r\n"),
			message("utf8", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Grüße aus Köln — こんにちは 🌍\r\n\xff\xfe raw 8-bit\r\n"),
			message("long", "long lines", strings.Repeat("x", 5000)+"\r\n"+strings.Repeat("y", 70000)+"\r\n.\r\n"),
			big,
			message("noeol", "no final CRLF", "the last line has no line end\r\n"),
		}
		for _, m := range msgs {
			up.box.Append("INBOX", m)
		}
		stored := up.box.Messages("INBOX")
		e := newEnv(t, up)
		c := e.session("")
		l := c.list()
		if len(l) != len(stored) {
			t.Fatalf("LIST has %d messages, the upstream %d", len(l), len(stored))
		}
		var total int64
		for i, m := range stored {
			got := c.retr(i + 1)
			if !bytes.Equal(got, m.Raw) {
				t.Errorf("RETR %d: %d octets differ from the %d stored upstream (first difference at %d)", i+1, len(got), len(m.Raw), firstDiff(got, m.Raw))
			}
			if l[i].size != int64(len(got)) {
				t.Errorf("LIST %d says %d octets, RETR sent %d", i+1, l[i].size, len(got))
			}
			total += int64(len(got))
		}
		if st := c.ok("STAT"); st != fmt.Sprintf("+OK %d %d", len(stored), total) {
			t.Errorf("STAT = %q, want %d messages of %d octets", st, len(stored), total)
		}
		if q := c.quit(); !strings.HasPrefix(q, "+OK") {
			t.Errorf("QUIT = %q", q)
		}
	})
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestBareLFMessage: a message stored with bare LFs is sent with CRLFs, and
// after the first RETR measured its true size, LIST reports it.
func TestBareLFMessage(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	mem.Append("INBOX", []byte("Subject: lf\nMessage-ID: <lf@x>\n\nline one\n.dot line\nlast line without end"))
	want := "Subject: lf\r\nMessage-ID: <lf@x>\r\n\r\nline one\r\n.dot line\r\nlast line without end\r\n"
	e := newEnv(t, up)
	c := e.session("")
	if got := string(c.retr(1)); got != want {
		t.Fatalf("RETR = %q, want %q", got, want)
	}
	c.quit()
	c = e.session("")
	if l := c.list(); l[0].size != int64(len(want)) {
		t.Errorf("LIST after the first RETR says %d, RETR sends %d", l[0].size, len(want))
	}
	c.quit()
}

func TestTop(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		header := "From: a@example.com\r\nSubject: top\r\nMessage-ID: <top@example.com>\r\n\r\n"
		body := "line 1\r\n.line 2 with a dot\r\nline 3\r\nline 4\r\nline 5\r\n"
		up.box.Append("INBOX", []byte(header+body))
		e := newEnv(t, up)
		c := e.session("")
		for _, tc := range []struct {
			n    int
			want string
		}{
			{0, header},
			{3, header + "line 1\r\n.line 2 with a dot\r\nline 3\r\n"},
			{5, header + body},
			{99999999, header + body}, // fetchmail's "whole message without \Seen"
		} {
			c.ok("TOP 1 %d", tc.n)
			if got := string(c.multi()); got != tc.want {
				t.Errorf("TOP 1 %d = %q, want %q", tc.n, got, tc.want)
			}
		}
		c.quit()
		for _, m := range up.box.Messages("INBOX") {
			if m.HasFlag(imap.FlagSeen) {
				t.Errorf("TOP set \\Seen upstream")
			}
		}
	})
}

func TestUIDLsStable(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		seed(up, 4)
		e := newEnv(t, up)
		c := e.session("")
		first := c.uidls()
		c.quit()
		if len(first) != 4 {
			t.Fatalf("UIDL lists %d messages, want 4", len(first))
		}
		uv := up.box.UIDValidity("INBOX")
		stored := up.box.Messages("INBOX")
		for i, u := range first {
			// Dovecot's default pop3_uidl_format: %08Xu%08Xv, lowercase.
			if want := fmt.Sprintf("%08x%08x", stored[i].UID, uv); u != want {
				t.Errorf("UIDL %d = %s, want %s", i+1, u, want)
			}
		}
		c = e.session("laptop")
		if again := c.uidls(); strings.Join(again, " ") != strings.Join(first, " ") {
			t.Errorf("another device sees UIDLs %v, want %v", again, first)
		}
		c.quit()
		e.restart()
		c = e.session("")
		if again := c.uidls(); strings.Join(again, " ") != strings.Join(first, " ") {
			t.Errorf("after a restart UIDLs are %v, want %v", again, first)
		}
		// New mail gets a new UIDL; the old ones stay.
		up.box.Append("INBOX", message("late", "late", "late\r\n"))
		c.quit()
		c = e.session("")
		again := c.uidls()
		if len(again) != 5 || strings.Join(again[:4], " ") != strings.Join(first, " ") || again[4] == "" {
			t.Errorf("after new mail UIDLs are %v", again)
		}
		c.quit()
	})
}

// TestUIDLSurvivesUIDVALIDITYChange recreates the upstream mailbox with the
// same messages: every message keeps its UIDL, a new one gets a new UIDL,
// and no UIDL is reused.
func TestUIDLSurvivesUIDVALIDITYChange(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	date := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	var raws [][]byte
	for i := range 3 {
		raw := message(fmt.Sprintf("keep%d", i), "keep", "same message\r\n")
		raws = append(raws, raw)
		mem.AppendAt("INBOX", raw, date.Add(time.Duration(i)*time.Minute))
	}
	e := newEnv(t, up)
	c := e.session("")
	before := c.uidls()
	c.quit()
	oldUV := mem.UIDValidity("INBOX")
	mem.Recreate("INBOX")
	if mem.UIDValidity("INBOX") == oldUV {
		t.Fatal("Recreate kept the UIDVALIDITY")
	}
	mem.AppendAt("INBOX", message("new", "new", "new\r\n"), date.Add(time.Hour)) // UID 1 now
	for i := 2; i >= 0; i-- {                                                    // in another order
		mem.AppendAt("INBOX", raws[i], date.Add(time.Duration(i)*time.Minute))
	}
	c = e.session("")
	after := c.list()
	c.quit()
	if len(after) != 4 {
		t.Fatalf("after the UIDVALIDITY change: %d messages", len(after))
	}
	got := map[string]bool{}
	for _, l := range after[1:] {
		got[l.uidl] = true
	}
	for _, u := range before {
		if !got[u] {
			t.Errorf("UIDL %s was lost in the UIDVALIDITY change (now %v)", u, after)
		}
	}
	for _, u := range before {
		if after[0].uidl == u {
			t.Errorf("the new message got an old UIDL %s", u)
		}
	}
}

func TestDeletePolicies(t *testing.T) {
	for _, policy := range []string{PolicyMove, PolicyExpunge, PolicyFlag, PolicyHide} {
		t.Run(policy, func(t *testing.T) {
			forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
				seed(up, 4)
				// Someone else's \Deleted message must survive our expunge.
				up.box.Append("INBOX", message("other", "someone else's", "x\r\n"), imap.FlagDeleted)
				e := newEnv(t, up, func(c *Config) { c.Delete.Policy = Policy(policy) })
				c := e.session("laptop")
				uidls := c.uidls()
				c.ok("DELE 1")
				c.ok("DELE 3")
				if q := c.quit(); !strings.HasPrefix(q, "+OK") {
					t.Fatalf("QUIT = %q", q)
				}
				inbox := up.box.Messages("INBOX")
				trash := up.box.Messages("Trash")
				switch policy {
				case PolicyMove:
					assertSubjects(t, "INBOX", inbox, "message 2", "message 4", "someone else's")
					assertSubjects(t, "Trash", trash, "message 1", "message 3")
				case PolicyExpunge:
					assertSubjects(t, "INBOX", inbox, "message 2", "message 4", "someone else's")
					assertSubjects(t, "Trash", trash)
				case PolicyFlag, PolicyHide:
					assertSubjects(t, "INBOX", inbox, "message 1", "message 2", "message 3", "message 4", "someone else's")
					assertSubjects(t, "Trash", trash)
					for i, m := range inbox[:4] {
						flagged := m.HasFlag(imap.FlagSeen) && m.HasFlag("$POP3Deleted")
						if want := policy == PolicyFlag && (i == 0 || i == 2); flagged != want {
							t.Errorf("message %d flags %v, want flagged=%v", i+1, m.Flags, want)
						}
						if m.HasFlag(imap.FlagDeleted) {
							t.Errorf("message %d got \\Deleted", i+1)
						}
					}
				}
				if !inbox[len(inbox)-1].HasFlag(imap.FlagDeleted) {
					t.Errorf("someone else's \\Deleted flag changed")
				}
				// This device no longer sees them, whatever the policy.
				c = e.session("laptop")
				if got := c.uidls(); strings.Join(got, " ") != strings.Join([]string{uidls[1], uidls[3], uidls[4]}, " ") {
					t.Errorf("this device sees %v after deleting 1 and 3 of %v", got, uidls)
				}
				c.quit()
				// Another device sees what the table says.
				c = e.session("phone")
				got := c.uidls()
				c.quit()
				want := []string{uidls[1], uidls[3], uidls[4]}
				if policy == PolicyFlag || policy == PolicyHide {
					want = uidls
				}
				if strings.Join(got, " ") != strings.Join(want, " ") {
					t.Errorf("another device sees %v, want %v", got, want)
				}
				if up.mem != nil {
					for _, cmd := range up.mem.CommandsNamed("EXPUNGE", "CLOSE") {
						t.Errorf("popbridge sent %q", cmd.Line)
					}
				}
			})
		})
	}
}

// flagString lists m's flags but \Recent, which only says which session
// saw the message first.
func flagString(m imaptest.Message) string {
	var f []string
	for _, fl := range m.Flags {
		if !strings.EqualFold(string(fl), `\Recent`) {
			f = append(f, strings.ToLower(string(fl)))
		}
	}
	slices.Sort(f)
	return strings.Join(f, " ")
}

func assertSubjects(t *testing.T, mailbox string, msgs []imaptest.Message, want ...string) {
	t.Helper()
	if got := subjects(msgs); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("%s holds %q, want %q", mailbox, got, want)
	}
}

// TestNothingDeletedWithoutQuit: DELE then a dropped connection, or RSET
// then QUIT, changes nothing upstream.
func TestNothingDeletedWithoutQuit(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		seed(up, 3)
		before := up.box.Messages("INBOX")
		e := newEnv(t, up, func(c *Config) { c.Delete.Policy = PolicyExpunge })
		c := e.session("")
		c.ok("DELE 1")
		c.ok("DELE 2")
		if st := c.ok("STAT"); !strings.HasPrefix(st, "+OK 1 ") {
			t.Errorf("STAT after two DELE = %q", st)
		}
		c.drop()

		c = e.session("") // the lock was released by the drop
		if n := len(c.uidls()); n != 3 {
			t.Errorf("after a dropped session %d messages are left, want 3", n)
		}
		c.ok("DELE 3")
		if st := c.ok("RSET"); !strings.HasPrefix(st, "+OK") {
			t.Errorf("RSET = %q", st)
		}
		if st := c.ok("STAT"); !strings.HasPrefix(st, "+OK 3 ") {
			t.Errorf("STAT after RSET = %q", st)
		}
		c.quit()
		after := up.box.Messages("INBOX")
		if len(after) != 3 {
			t.Fatalf("upstream holds %d messages, want 3", len(after))
		}
		for i := range after {
			if after[i].UID != before[i].UID || flagString(after[i]) != flagString(before[i]) {
				t.Errorf("message %d changed: %q -> %q", i+1, flagString(before[i]), flagString(after[i]))
			}
		}
	})
}

// TestFailedExpungeIsReplayed: an upstream that fails UID EXPUNGE leaves the
// intent recorded, the client gets -ERR, and its next login finishes it.
func TestFailedExpungeIsReplayed(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 3)
	e := newEnv(t, up, func(c *Config) { c.Delete.Policy = PolicyExpunge })
	c := e.session("")
	uidls := c.uidls()
	c.ok("DELE 2")
	mem.Fail("EXPUNGE", imaptest.ErrUnavailable)
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP]") {
		t.Errorf("QUIT with a failing upstream = %q, want -ERR [SYS/TEMP]", q)
	}
	if n := len(mem.Messages("INBOX")); n != 3 {
		t.Fatalf("after the failed UID EXPUNGE the upstream holds %d messages", n)
	}
	cl, err := e.st.LoadClient(context.Background(), state.ClientKey{Mailbox: e.srv.Bridge.mailboxKey(up.user), Client: ""})
	if err != nil || cl.Pending == nil || len(cl.Pending.UIDLs) != 1 || cl.Pending.UIDLs[0] != uidls[1] {
		t.Fatalf("pending intent = %+v, %v; want UIDL %s", cl.Pending, err, uidls[1])
	}

	// A restart in between changes nothing: the intent is on disk.
	e.restart()
	mem.Fail("EXPUNGE", nil)
	c = e.session("")
	if got := c.uidls(); strings.Join(got, " ") != uidls[0]+" "+uidls[2] {
		t.Errorf("after the replay the client sees %v", got)
	}
	c.quit()
	assertSubjects(t, "INBOX", mem.Messages("INBOX"), "message 1", "message 3")
	cl, _ = e.st.LoadClient(context.Background(), state.ClientKey{Mailbox: e.srv.Bridge.mailboxKey(up.user)})
	if cl.Pending != nil {
		t.Errorf("the intent is still pending after the replay: %+v", cl.Pending)
	}
}

// TestExpungeNeedsUIDPLUS: without UIDPLUS the expunge policy refuses with
// a clear error and sends nothing that could widen the deletion.
func TestExpungeNeedsUIDPLUS(t *testing.T) {
	mem := imaptest.NewMemServer(t, imaptest.WithCaps(imap.CapIMAP4rev1))
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 2)
	e := newEnv(t, up, func(c *Config) { c.Delete.Policy = PolicyExpunge })
	c := e.session("")
	c.ok("DELE 1")
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/PERM]") || !strings.Contains(q, "UIDPLUS") {
		t.Errorf("QUIT = %q, want -ERR [SYS/PERM] naming UIDPLUS", q)
	}
	if n := len(mem.Messages("INBOX")); n != 2 {
		t.Errorf("upstream holds %d messages, want 2", n)
	}
	for _, cmd := range mem.CommandsNamed("STORE", "UID STORE", "UID EXPUNGE", "EXPUNGE", "CLOSE") {
		t.Errorf("popbridge sent %q", cmd.Line)
	}
}

// TestMoveFallback: without MOVE but with UIDPLUS, the move policy copies,
// flags and UID EXPUNGEs exactly its own messages.
func TestMoveFallback(t *testing.T) {
	mem := imaptest.NewMemServer(t, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus))
	mem.Create("Trash", imap.MailboxAttrTrash)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 3)
	e := newEnv(t, up)
	c := e.session("")
	c.ok("DELE 2")
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("QUIT = %q", q)
	}
	assertSubjects(t, "INBOX", mem.Messages("INBOX"), "message 1", "message 3")
	assertSubjects(t, "Trash", mem.Messages("Trash"), "message 2")
	if len(mem.CommandsNamed("UID MOVE")) != 0 || len(mem.CommandsNamed("UID COPY")) != 1 {
		t.Errorf("commands: %v", mem.Commands())
	}
}

func TestMaildropLock(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		seed(up, 1)
		e := newEnv(t, up)
		a := e.session("laptop")
		b := dialPOP(t, e.addr)
		b.ok("USER %s#laptop", up.user)
		if r := b.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
			t.Errorf("second session of the same device: %q, want -ERR [IN-USE]", r)
		}
		other := e.session("phone") // another device of the same account
		other.quit()
		plain := e.session("") // and the account without a tag
		plain.quit()
		a.quit()
		again := e.session("laptop") // released by QUIT
		again.quit()
	})
}

func TestLoginErrors(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		e := newEnv(t, up)
		c := dialPOP(t, e.addr)
		c.ok("USER %s", up.user)
		if r := c.cmd("PASS wrong-password"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Errorf("wrong password: %q, want -ERR [AUTH]", r)
		}
		c.ok("USER %s#bad/tag", up.user)
		if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Errorf("bad device tag: %q", r)
		}
		c.quit()
	})
	// An upstream that is down is a temporary failure.
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{addr: "127.0.0.1:1", user: mem.User, pass: mem.Pass}
	e := newEnv(t, up)
	c := dialPOP(t, e.addr)
	c.ok("USER %s", up.user)
	if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Errorf("upstream down: %q, want -ERR [SYS/TEMP]", r)
	}
	// And one that refuses SELECT of a missing mailbox is a permanent one.
	up = &upstreamEnv{addr: mem.Addr, user: mem.User, pass: mem.Pass}
	e = newEnv(t, up, func(c *Config) { c.Upstream.Mailbox = "Nonexistent" })
	c = dialPOP(t, e.addr)
	c.ok("USER %s", up.user)
	if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [SYS/PERM]") {
		t.Errorf("missing mailbox: %q, want -ERR [SYS/PERM]", r)
	}
}

// TestMarkSeenOnRetr: the option sets \Seen after RETR, and only then.
func TestMarkSeenOnRetr(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		seed(up, 2)
		e := newEnv(t, up, func(c *Config) { c.Upstream.MarkSeenOnRetr = true })
		c := e.session("")
		c.retr(2)
		c.ok("TOP 1 0")
		c.multi()
		c.quit()
		msgs := up.box.Messages("INBOX")
		if msgs[0].HasFlag(imap.FlagSeen) || !msgs[1].HasFlag(imap.FlagSeen) {
			t.Errorf("flags after TOP 1 and RETR 2: %v, %v", msgs[0].Flags, msgs[1].Flags)
		}
	})
}
