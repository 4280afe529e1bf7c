package bridge

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge/account"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/oauthtest"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
)

// mergeSources makes the login of up's account a merged maildrop of the
// given mailboxes of its own account.
func mergeSources(up *upstreamEnv, dedup bool, mailboxes ...string) func(*Config) {
	return func(c *Config) {
		var src []MaildropSource
		for _, m := range mailboxes {
			src = append(src, MaildropSource{Mailbox: m})
		}
		c.Maildrops = []MaildropConfig{{Account: up.user, Sources: src, Dedup: dedup}}
	}
}

// seedBox appends n messages to mailbox, with subjects "<mailbox> <i>".
func seedBox(up *upstreamEnv, mailbox string, n int) [][]byte {
	var out [][]byte
	for i := 1; i <= n; i++ {
		raw := message(fmt.Sprintf("%s-%d", strings.ToLower(strings.ReplaceAll(mailbox, "/", "-")), i),
			fmt.Sprintf("%s %d", mailbox, i), fmt.Sprintf("body %d of %s\r\n", i, mailbox))
		up.box.Append(mailbox, raw)
		out = append(out, raw)
	}
	return out
}

// checkUIDLs fails unless every UIDL is unique, 1 to 70 characters of
// 0x21–0x7E (RFC 1939 §7).
func checkUIDLs(t *testing.T, uidls []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, u := range uidls {
		if seen[u] {
			t.Errorf("UIDL %q listed twice in %v", u, uidls)
		}
		seen[u] = true
		if len(u) == 0 || len(u) > 70 {
			t.Errorf("UIDL %q: %d characters", u, len(u))
		}
		for i := 0; i < len(u); i++ {
			if u[i] < 0x21 || u[i] > 0x7e {
				t.Errorf("UIDL %q: character %q", u, u[i])
			}
		}
	}
}

// TestMergedListing: a merged maildrop lists its sources' messages in the
// configured order, byte for byte; the login's own mailbox keeps the UIDLs
// an unmerged session had, the others get unique ones that stay theirs
// when the order of the sources changes.
func TestMergedListing(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		up.box.Create("Junk")
		up.box.Create("Projects")
		inbox := seedBox(up, "INBOX", 3)
		junk := seedBox(up, "Junk", 2)
		projects := seedBox(up, "Projects", 1)
		e := newEnv(t, up)
		c := e.session("laptop")
		plain := c.uidls()
		c.quit()

		e.stop()
		mergeSources(up, false, "INBOX", "Junk", "Projects")(&e.cfg)
		e.start()
		c = e.session("laptop")
		l := c.list()
		var uidls []string
		for _, m := range l {
			uidls = append(uidls, m.uidl)
		}
		want := slices.Concat(inbox, junk, projects)
		if len(l) != len(want) {
			t.Fatalf("merged maildrop lists %d messages, want %d", len(l), len(want))
		}
		for i, raw := range want {
			if got := c.retr(i + 1); !bytes.Equal(got, raw) {
				t.Errorf("RETR %d = %q, want %q", i+1, got, raw)
			}
			if l[i].size != int64(len(raw)) {
				t.Errorf("LIST %d = %d octets, want %d", i+1, l[i].size, len(raw))
			}
		}
		c.quit()
		if !slices.Equal(uidls[:3], plain) {
			t.Errorf("the login's own mailbox lists UIDLs %v merged, %v unmerged", uidls[:3], plain)
		}
		checkUIDLs(t, uidls)
		byUIDL := map[string][]byte{}
		for i, u := range uidls {
			byUIDL[u] = want[i]
		}

		// Another order: each message keeps its UIDL.
		e.stop()
		mergeSources(up, false, "Projects", "INBOX", "Junk")(&e.cfg)
		e.start()
		c = e.session("laptop")
		l = c.list()
		if len(l) != len(want) {
			t.Fatalf("reordered: %d messages", len(l))
		}
		for i, m := range l {
			raw, ok := byUIDL[m.uidl]
			if !ok {
				t.Errorf("reordered: message %d has a new UIDL %q", i+1, m.uidl)
				continue
			}
			if got := c.retr(i + 1); !bytes.Equal(got, raw) {
				t.Errorf("reordered: UIDL %s is now %q, was %q", m.uidl, got, raw)
			}
		}
		if got := c.retr(1); !bytes.Equal(got, projects[0]) {
			t.Errorf("reordered: the first message is %q, want the Projects one", got)
		}
		c.quit()

		// Another device of the account gets the same UIDLs.
		c = e.session("phone")
		var phone []string
		for _, m := range c.list() {
			phone = append(phone, m.uidl)
		}
		c.quit()
		for _, u := range phone {
			if _, ok := byUIDL[u]; !ok {
				t.Errorf("another device sees UIDL %q, unknown to the first", u)
			}
		}
	})
}

// TestMergedDeletePolicies: DELE and QUIT in a merged maildrop reach the
// source each message came from, under every policy, and nothing else.
func TestMergedDeletePolicies(t *testing.T) {
	for _, policy := range []string{PolicyMove, PolicyExpunge, PolicyFlag, PolicyHide} {
		t.Run(policy, func(t *testing.T) {
			forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
				up.box.Create("Junk")
				seedBox(up, "INBOX", 3)
				seedBox(up, "Junk", 2)
				e := newEnv(t, up, mergeSources(up, false, "INBOX", "Junk"), func(c *Config) { c.Delete.Policy = Policy(policy) })
				flagsBefore := map[string][]string{}
				for _, mb := range []string{"INBOX", "Junk"} {
					for _, m := range up.box.Messages(mb) {
						flagsBefore[mb] = append(flagsBefore[mb], flagString(m))
					}
				}
				c := e.session("laptop")
				uidls := c.uidls()
				c.ok("DELE 2") // INBOX 2
				c.ok("DELE 5") // Junk 2
				if q := c.quit(); !strings.HasPrefix(q, "+OK") {
					t.Fatalf("QUIT = %q", q)
				}
				inbox, junk, trash := up.box.Messages("INBOX"), up.box.Messages("Junk"), up.box.Messages("Trash")
				switch policy {
				case PolicyMove:
					assertSubjects(t, "INBOX", inbox, "INBOX 1", "INBOX 3")
					assertSubjects(t, "Junk", junk, "Junk 1")
					assertSubjects(t, "Trash", trash, "INBOX 2", "Junk 2")
				case PolicyExpunge:
					assertSubjects(t, "INBOX", inbox, "INBOX 1", "INBOX 3")
					assertSubjects(t, "Junk", junk, "Junk 1")
					assertSubjects(t, "Trash", trash)
				default:
					assertSubjects(t, "INBOX", inbox, "INBOX 1", "INBOX 2", "INBOX 3")
					assertSubjects(t, "Junk", junk, "Junk 1", "Junk 2")
					assertSubjects(t, "Trash", trash)
				}
				// Flags: only the deleted messages, only under flag.
				for mb, msgs := range map[string][]imaptest.Message{"INBOX": inbox, "Junk": junk} {
					for i, m := range msgs {
						want := flagsBefore[mb][i]
						if policy == PolicyFlag && (mb == "INBOX" && i == 1 || mb == "Junk" && i == 1) {
							want = strings.TrimSpace(want + " $pop3deleted \\seen")
						}
						if got := flagString(m); got != want {
							t.Errorf("%s message %d: flags %q, want %q", mb, i+1, got, want)
						}
					}
				}
				left := []string{uidls[0], uidls[2], uidls[3]}
				c = e.session("laptop")
				if got := c.uidls(); !slices.Equal(got, left) {
					t.Errorf("this device sees %v after deleting 2 and 5 of %v", got, uidls)
				}
				c.quit()
				c = e.session("phone")
				got := c.uidls()
				c.quit()
				want := left
				if policy == PolicyFlag || policy == PolicyHide {
					want = uidls
				}
				if !slices.Equal(got, want) {
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

// TestMergedSourceDown: when one source cannot be selected, the login
// fails with [SYS/TEMP], nothing is listed and nothing changes upstream,
// not even the UPDATE an earlier session left pending.
func TestMergedSourceDown(t *testing.T) {
	up := memUpstream(t)
	up.box.Create("Junk")
	seedBox(up, "INBOX", 2)
	seedBox(up, "Junk", 2)
	e := newEnv(t, up, mergeSources(up, false, "INBOX", "Junk"), func(c *Config) {
		c.Delete.Policy = PolicyExpunge
		c.Upstream.Timeout = 2 * time.Second // the hanging SELECT
		c.Server.AuthTimeout = time.Minute
	})
	c := e.session("")
	c.ok("DELE 1")
	c.ok("DELE 3")
	up.mem.Fail("EXPUNGE", imaptest.ErrServerBug)
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP]") {
		t.Fatalf("QUIT with the upstream failing = %q", q)
	}
	up.mem.Fail("EXPUNGE", nil)
	before := map[string][]imaptest.Message{"INBOX": up.box.Messages("INBOX"), "Junk": up.box.Messages("Junk")}
	for _, fail := range []string{"missing", "refused", "timeout"} {
		t.Run(fail, func(t *testing.T) {
			var unblock func()
			switch fail {
			case "missing":
				up.mem.Delete("Junk")
			case "refused":
				up.mem.Fail("SELECT Junk", imaptest.ErrNo)
			case "timeout":
				unblock = up.mem.Block("SELECT Junk")
			}
			c := dialPOP(t, e.addr)
			c.ok("USER %s", up.user)
			if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
				t.Errorf("login with a source down = %q, want -ERR [SYS/TEMP]", r)
			}
			c.drop()
			if got := up.box.Messages("INBOX"); !sameMessages(got, before["INBOX"]) {
				t.Errorf("INBOX changed while a source was down:\n%v\nwas\n%v", got, before["INBOX"])
			}
			switch fail {
			case "missing":
				up.mem.Create("Junk")
				for _, m := range before["Junk"] {
					up.mem.AppendAt("Junk", m.Raw, m.Date, m.Flags...)
				}
			case "refused":
				up.mem.Fail("SELECT Junk", nil)
				if got := up.box.Messages("Junk"); !sameMessages(got, before["Junk"]) {
					t.Errorf("Junk changed while it was down:\n%v\nwas\n%v", got, before["Junk"])
				}
			case "timeout":
				unblock()
			}
		})
	}
	// Back up: the pending UPDATE is finished, in INBOX as in Junk (whose
	// UIDVALIDITY changed: its message is found again by fingerprint).
	c = e.session("")
	n := len(c.uidls())
	c.quit()
	if n != 2 {
		t.Errorf("after the sources are back: %d messages listed, want 2", n)
	}
	assertSubjects(t, "INBOX", up.box.Messages("INBOX"), "INBOX 2")
	assertSubjects(t, "Junk", up.box.Messages("Junk"), "Junk 2")
}

// TestMergedSourceGone: on every upstream, a source mailbox that is gone
// fails the login with [SYS/TEMP] and changes nothing; once it is back, the
// merged maildrop is served again.
func TestMergedSourceGone(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		up.box.Create("Junk")
		seedBox(up, "INBOX", 2)
		junk := seedBox(up, "Junk", 1)
		e := newEnv(t, up, mergeSources(up, false, "INBOX", "Junk"), func(c *Config) { c.Delete.Policy = PolicyExpunge })
		c := e.session("")
		if n := len(c.uidls()); n != 3 {
			t.Fatalf("%d messages listed, want 3", n)
		}
		c.quit()
		inbox := up.box.Messages("INBOX")
		up.box.Delete("Junk")
		p := dialPOP(t, e.addr)
		p.ok("USER %s", up.user)
		if r := p.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
			t.Errorf("login with the Junk source gone = %q, want -ERR [SYS/TEMP]", r)
		}
		p.drop()
		if got := up.box.Messages("INBOX"); !sameMessages(got, inbox) {
			t.Errorf("INBOX changed while a source was gone:\n%v\nwas\n%v", got, inbox)
		}
		up.box.Create("Junk")
		up.box.Append("Junk", junk[0])
		c = e.session("")
		if n := len(c.uidls()); n != 3 {
			t.Errorf("with Junk back: %d messages listed, want 3", n)
		}
		if got := c.retr(3); !bytes.Equal(got, junk[0]) {
			t.Errorf("RETR 3 = %q, want the Junk message", got)
		}
		c.quit()
	})
}

// sameMessages compares UIDs, flags and contents.
func sameMessages(a, b []imaptest.Message) bool {
	return slices.EqualFunc(a, b, func(x, y imaptest.Message) bool {
		return x.UID == y.UID && flagString(x) == flagString(y) && bytes.Equal(x.Raw, y.Raw)
	})
}

// TestMergedUIDVALIDITYChange: a source whose UIDVALIDITY changed re-matches
// its messages by fingerprint and keeps their UIDLs; the other sources keep
// theirs, and DELE still reaches the right message.
func TestMergedUIDVALIDITYChange(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		up.box.Create("Junk")
		seedBox(up, "INBOX", 2)
		junk := seedBox(up, "Junk", 2)
		e := newEnv(t, up, mergeSources(up, false, "INBOX", "Junk"), func(c *Config) { c.Delete.Policy = PolicyExpunge })
		c := e.session("")
		before := c.uidls()
		c.quit()
		// A rebuilt mailbox keeps each message's INTERNALDATE (part of
		// the fingerprint): appended again, they get their old dates.
		old := up.box.Messages("Junk")
		uv := up.box.UIDValidity("Junk")
		up.box.Recreate("Junk")
		if up.box.UIDValidity("Junk") == uv {
			t.Fatal("Recreate kept the UIDVALIDITY")
		}
		up.box.Append("Junk", message("junk-new", "Junk new", "new\r\n"))
		up.box.AppendAt("Junk", junk[1], old[1].Date)
		up.box.AppendAt("Junk", junk[0], old[0].Date)
		c = e.session("")
		l := c.list()
		if len(l) != 5 {
			t.Fatalf("after the UIDVALIDITY change of Junk: %d messages", len(l))
		}
		// INBOX first, untouched; then Junk in its new UID order.
		want := []string{before[0], before[1], "", before[3], before[2]}
		for i, m := range l {
			if i == 2 {
				if slices.Contains(before, m.uidl) {
					t.Errorf("the new Junk message got an old UIDL %s", m.uidl)
				}
				continue
			}
			if m.uidl != want[i] {
				t.Errorf("message %d: UIDL %s, want %s", i+1, m.uidl, want[i])
			}
		}
		checkUIDLs(t, c.uidls())
		if got := c.retr(5); !bytes.Equal(got, junk[0]) {
			t.Errorf("RETR 5 = %q, want Junk 1", got)
		}
		c.ok("DELE 5")
		if q := c.quit(); !strings.HasPrefix(q, "+OK") {
			t.Fatalf("QUIT = %q", q)
		}
		assertSubjects(t, "Junk", up.box.Messages("Junk"), "Junk new", "Junk 2")
		assertSubjects(t, "INBOX", up.box.Messages("INBOX"), "INBOX 1", "INBOX 2")
	})
}

// TestMergedDedup: with dedup, a message whose Message-ID an earlier source
// has is not listed; DELE of the one listed deletes it alone and hides the
// duplicate from this device. Without dedup both are listed.
func TestMergedDedup(t *testing.T) {
	for _, dedup := range []bool{false, true} {
		t.Run(fmt.Sprint("dedup=", dedup), func(t *testing.T) {
			up := memUpstream(t)
			up.box.Create("Junk")
			inbox := seedBox(up, "INBOX", 2)
			seedBox(up, "Junk", 1)
			// The same message in both (another copy, other bytes).
			up.box.Append("Junk", bytes.Replace(inbox[1], []byte("body"), []byte("copy"), 1))
			e := newEnv(t, up, mergeSources(up, dedup, "INBOX", "Junk"), func(c *Config) { c.Delete.Policy = PolicyExpunge })
			c := e.session("laptop")
			l := c.list()
			want := 4
			if dedup {
				want = 3
			}
			if len(l) != want {
				t.Fatalf("%d messages listed, want %d", len(l), want)
			}
			if !dedup {
				c.quit()
				return
			}
			if got := c.retr(2); !bytes.Equal(got, inbox[1]) {
				t.Errorf("RETR 2 = %q, want the INBOX copy", got)
			}
			c.ok("DELE 2")
			if q := c.quit(); !strings.HasPrefix(q, "+OK") {
				t.Fatalf("QUIT = %q", q)
			}
			assertSubjects(t, "INBOX", up.box.Messages("INBOX"), "INBOX 1")
			assertSubjects(t, "Junk", up.box.Messages("Junk"), "Junk 1", "INBOX 2")
			// This device does not get the duplicate back.
			c = e.session("laptop")
			got := c.uidls()
			c.quit()
			if !slices.Equal(got, []string{l[0].uidl, l[2].uidl}) {
				t.Errorf("after DELE of the listed copy this device sees %v, want %v", got, []string{l[0].uidl, l[2].uidl})
			}
			// Another device sees the copy that is left.
			c = e.session("phone")
			if n := len(c.list()); n != 3 {
				t.Errorf("another device sees %d messages, want 3 (INBOX 1, Junk 1 and the copy in Junk)", n)
			}
			c.quit()
		})
	}
}

// TestMergedUIDL: numbered UIDLs are printable and at most 70 characters,
// the plain ones are left alone, and sources never share one.
func TestMergedUIDL(t *testing.T) {
	long := strings.Repeat("x", 70)
	for _, tc := range []struct {
		number uint32
		uidl   string
		want   string
	}{
		{0, "000000010000002a", "000000010000002a"},
		{0, long, long},
		{1, "000000010000002a", "s1-000000010000002a"},
		{12, "u7", "s12-u7"},
	} {
		if got := mergedUIDL(tc.number, tc.uidl); got != tc.want {
			t.Errorf("mergedUIDL(%d, %q) = %q, want %q", tc.number, tc.uidl, got, tc.want)
		}
	}
	a, b := mergedUIDL(3, long), mergedUIDL(3, long[1:]+"y")
	checkUIDLs(t, []string{a, b, mergedUIDL(4, long), mergedUIDL(1, "2-x"), mergedUIDL(12, "x")})
	if !strings.HasPrefix(a, "s3=") || a != mergedUIDL(3, long) {
		t.Errorf("a long UIDL became %q (not stable, or not marked)", a)
	}
}

// TestMaildropsConfig: [[maildrops]] reads sources as strings and tables,
// and every mistake is reported with its key.
func TestMaildropsConfig(t *testing.T) {
	base := "[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"none\"\n"
	cfg, err := ParseConfig(base + `
[[maildrops]]
account = "alice@example.com"
sources = ["INBOX", "Junk", "Projects/Acme"]

[[maildrops]]
account = "family@example.org"
device = "kitchen"
sources = ["INBOX", { account = "bob@example.org", mailbox = "INBOX" }]
dedup = true

[accounts]
server_key_file = "/dev/null"
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []MaildropConfig{
		{Account: "alice@example.com", Sources: []MaildropSource{{Mailbox: "INBOX"}, {Mailbox: "Junk"}, {Mailbox: "Projects/Acme"}}},
		{Account: "family@example.org", Device: "kitchen", Dedup: true, Sources: []MaildropSource{{Mailbox: "INBOX"}, {Account: "bob@example.org", Mailbox: "INBOX"}}},
	}
	if fmt.Sprint(cfg.Maildrops) != fmt.Sprint(want) {
		t.Errorf("maildrops = %+v, want %+v", cfg.Maildrops, want)
	}
	if md := cfg.maildropFor("Alice@Example.com", "phone"); md == nil || md.Account != "alice@example.com" {
		t.Errorf("maildropFor folds case and takes any device: %+v", md)
	}
	if md := cfg.maildropFor("family@example.org", "phone"); md != nil {
		t.Errorf("a table with a device served another device: %+v", md)
	}

	for _, tc := range []struct{ text, want string }{
		{"[[maildrops]]\nsources = [\"INBOX\"]\n", "maildrops[0].account: is required"},
		{"[[maildrops]]\naccount = \"a#b\"\nsources = [\"INBOX\"]\n", "holds the device separator"},
		{"[[maildrops]]\naccount = \"a\"\n", "maildrops[0].sources: names no mailbox"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [\"INBOX\", \"\"]\n", "maildrops[0].sources[1]: the mailbox name is empty"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [\"INBOX\", \"INBOX\"]\n", "INBOX is listed twice"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [\"INBOX\"]\n[[maildrops]]\naccount = \"A\"\nsources = [\"Junk\"]\n", "has a merged maildrop already (maildrops[0])"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [{ account = \"b\", mailbox = \"INBOX\" }]\n", "needs accounts.server_key_file"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [{ mailbox = \"INBOX\" }]\n", "a source table names another account"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [{ account = \"b\", folder = \"INBOX\" }]\n", `unknown source key "folder"`},
		{"[[maildrops]]\naccount = \"a\"\nsources = [1]\n", "a source is a mailbox name"},
		{"[[maildrops]]\naccount = \"a\"\ndevice = \"bad tag\"\nsources = [\"INBOX\"]\n", "maildrops[0].device"},
		{"[[maildrops]]\naccount = \"a\"\nsources = [\"INBOX\"]\nmerge = true\n", "maildrops[0].merge"},
	} {
		_, err := ParseConfig(base + tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config\n%s\ngave %v, want an error with %q", tc.text, err, tc.want)
		}
	}
}

// TestMergedInUse: the merged maildrop holds the lock of the login's own
// maildrop; a second session of the device is refused.
func TestMergedInUse(t *testing.T) {
	up := memUpstream(t)
	up.box.Create("Junk")
	seedBox(up, "Junk", 1)
	e := newEnv(t, up, mergeSources(up, false, "INBOX", "Junk"))
	c := e.session("laptop")
	d := dialPOP(t, e.addr)
	d.ok("USER %s#laptop", up.user)
	if r := d.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Errorf("a second session of the device = %q, want -ERR [IN-USE]", r)
	}
	d.drop()
	c.quit()
}

// TestMergedEnrolledAccounts: an enrolled account's merged maildrop lists
// the INBOX of another enrolled account after its own, opened with the
// server key; its own messages keep their UIDLs, and DELE moves the other
// account's message to that account's Trash.
func TestMergedEnrolledAccounts(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "server.key")
	if err := account.WriteServerKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	key, err := account.ReadServerKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	e := newOAuthEnv(t, oauthtest.Options{}, func(c *Config) { c.Accounts.ServerKeyFile = keyFile })
	e.serverKey = key
	e.start()
	pwFront := e.enrollDevice("frontdesk", "fake", oauthtest.SharedMailbox)
	pwScan := e.enrollDevice("scanner", "fake", "")
	own, shared := e.mailOf(oauthtest.User), e.mailOf(oauthtest.SharedMailbox)
	plain := e.readAll("scanner", pwScan, own)

	e.stop()
	e.cfg.Maildrops = []MaildropConfig{{Account: "scanner", Sources: []MaildropSource{
		{Mailbox: "INBOX"}, {Account: "frontdesk", Mailbox: "INBOX"},
	}}}
	e.start()
	merged := e.readAll("scanner", pwScan, slices.Concat(own, shared))
	if !slices.Equal(merged[:3], plain) {
		t.Errorf("the account's own messages: UIDLs %v merged, %v unmerged", merged[:3], plain)
	}
	checkUIDLs(t, merged)
	// frontdesk's own login is not merged and keeps its own view.
	e.readAll("frontdesk", pwFront, shared)

	c := dialPOP(t, e.addr)
	c.login("scanner", pwScan)
	c.ok("DELE 5")
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("QUIT = %q", q)
	}
	for _, tc := range []struct {
		address, folder string
		want            uint32
	}{
		{oauthtest.SharedMailbox, "INBOX", 2},
		{oauthtest.SharedMailbox, "Trash", 1},
		{oauthtest.User, "INBOX", 3},
	} {
		if n, err := e.fake.IMAP.NumMessages(tc.address, tc.folder); err != nil || n != tc.want {
			t.Errorf("%s %s holds %d messages (%v), want %d", tc.address, tc.folder, n, err, tc.want)
		}
	}
	if n, err := e.fake.IMAP.NumMessages(oauthtest.User, "Trash"); err == nil && n != 0 {
		t.Errorf("the login's own Trash got %d messages", n)
	}
}

// TestMergedOtherAccountNeedsEnrolled: a pass-through login whose merged
// maildrop names another account's mailbox is refused with [SYS/PERM],
// before anything is synced.
func TestMergedOtherAccountNeedsEnrolled(t *testing.T) {
	up := memUpstream(t)
	seedBox(up, "INBOX", 1)
	keyFile := filepath.Join(t.TempDir(), "server.key")
	if err := account.WriteServerKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, up, func(c *Config) {
		c.Accounts.ServerKeyFile = keyFile
		c.Maildrops = []MaildropConfig{{Account: up.user, Sources: []MaildropSource{{Mailbox: "INBOX"}, {Account: "bob", Mailbox: "INBOX"}}}}
	})
	c := dialPOP(t, e.addr)
	c.ok("USER %s", up.user)
	if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [SYS/PERM]") {
		t.Errorf("pass-through login with another account's source = %q, want -ERR [SYS/PERM]", r)
	}
	c.drop()
}

// TestMergedFetchmailKeep: fetchmail in keep mode that polled the unmerged
// maildrop fetches only the new source's messages once merging is turned
// on, byte for byte, and nothing after that; nothing changes upstream.
func TestMergedFetchmailKeep(t *testing.T) {
	c := realClients[slices.IndexFunc(realClients, func(c realClient) bool { return c.name == "fetchmail" })]
	if _, err := exec.LookPath(c.bin); err != nil {
		t.Skipf("%s is not installed (.ci/run installs it)", c.bin)
	}
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		up.box.Create("Projects")
		seedBox(up, "INBOX", 3)
		seedBox(up, "Projects", 2)
		inbox, projects := up.box.Messages("INBOX"), up.box.Messages("Projects")
		e := newEnv(t, up)
		r := newClientRunner(t, c, e, "fetchmail")
		got, out := r.run(true)
		checkDelivered(t, c, "unmerged", got, inbox, out)

		e.stop()
		mergeSources(up, false, "INBOX", "Projects")(&e.cfg)
		e.start()
		home := r.h.home
		r = newClientRunner(t, c, e, "fetchmail")
		r.h.home = home // the same fetchmail, its UIDL list kept
		got, out = r.run(true)
		checkDelivered(t, c, "merged", got, projects, out)
		got, out = r.run(true)
		if len(got) != 0 {
			t.Errorf("second merged run fetched %d messages, want 0\n%s", len(got), out)
		}
		for mb, before := range map[string][]imaptest.Message{"INBOX": inbox, "Projects": projects} {
			if now := up.box.Messages(mb); !sameMessages(now, before) {
				t.Errorf("%s changed in keep mode:\n%v\nwas\n%v", mb, now, before)
			}
		}
	})
}

// TestMergedStores: the source numbers live in the shared store. Two
// instances on one PostgreSQL store list the same UIDLs, the merged
// maildrop's lock holds across them, and on either store `state check`
// finds nothing wrong and export/import carries the numbers over.
func TestMergedStores(t *testing.T) {
	for _, driver := range []string{"bolt", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			up := memUpstream(t)
			up.box.Create("Junk")
			seedBox(up, "INBOX", 2)
			seedBox(up, "Junk", 2)
			opts := []envOpt{withConfig(mergeSources(up, false, "INBOX", "Junk"), func(c *Config) { c.Delete.Policy = PolicyHide })}
			if driver == "postgres" {
				opts = append(opts, withPostgres(pgtest.Schema(t)))
			}
			a := startBridge(t, up, opts...)
			ca := a.session("laptop")
			uidls := ca.uidls()
			ca.ok("DELE 4")
			if q := ca.quit(); !strings.HasPrefix(q, "+OK") {
				t.Fatalf("QUIT = %q", q)
			}
			if driver == "postgres" {
				b := startBridge(t, up, opts...)
				cb := b.session("phone")
				if got := cb.uidls(); !slices.Equal(got, uidls) {
					t.Errorf("the other instance lists %v, want %v", got, uidls)
				}
				cl := dialPOP(t, a.addr)
				cl.ok("USER %s#phone", up.user)
				if r := cl.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
					t.Errorf("the same device on the other instance: %q, want -ERR [IN-USE]", r)
				}
				cl.drop()
				cb.quit()
			}
			ex, ok := a.st.(state.Exporter)
			if !ok {
				t.Fatalf("%T is no state.Exporter", a.st)
			}
			n, err := state.Check(t.Context(), ex, func(p state.Problem) { t.Errorf("state check: %s", p) })
			if err != nil || n != 0 {
				t.Errorf("state check: %d problems, %v", n, err)
			}
			// Export, import into a new bolt store, serve from it: the
			// same UIDLs, DELE 4 still hidden for the laptop.
			var dump bytes.Buffer
			if _, err := state.Export(t.Context(), ex, &dump); err != nil {
				t.Fatal(err)
			}
			a.stop()
			dst, err := boltstore.Open(filepath.Join(t.TempDir(), "imported.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := state.Import(t.Context(), dst, &dump); err != nil {
				t.Fatal(err)
			}
			c := startBridge(t, up, withStore(dst, false), withConfig(mergeSources(up, false, "Junk", "INBOX"))).session("laptop")
			got := c.uidls()
			c.quit()
			if want := []string{uidls[2], uidls[0], uidls[1]}; !slices.Equal(got, want) {
				t.Errorf("after export and import, reordered: %v, want %v", got, want)
			}
		})
	}
}

// TestMergedFirstSourceMissing: a missing mailbox is [SYS/TEMP] also when it
// is the first source; a wrong password is still [AUTH].
func TestMergedFirstSourceMissing(t *testing.T) {
	up := memUpstream(t)
	seedBox(up, "INBOX", 1)
	e := newEnv(t, up, mergeSources(up, false, "Junk", "INBOX"))
	for _, tc := range []struct{ name, pass, want string }{
		{"right password", up.pass, "-ERR [SYS/TEMP]"},
		{"wrong password", "wrong", "-ERR [AUTH]"},
	} {
		c := dialPOP(t, e.addr)
		c.ok("USER %s", up.user)
		if r := c.cmd("PASS %s", tc.pass); !strings.HasPrefix(r, tc.want) {
			t.Errorf("%s, the first source missing: %q, want %s", tc.name, r, tc.want)
		}
		c.drop()
	}
}

// TestMergedListCollision: a UIDL of the login's own mailbox that looks
// like a numbered one (imported from another server) keeps it; the other
// source's message that would get the same UIDL is not listed, so no UIDL
// is listed twice.
func TestMergedListCollision(t *testing.T) {
	part := func(number uint32, uidls ...string) *mergedPart {
		md := &maildrop{}
		for _, u := range uidls {
			md.msgs = append(md.msgs, pop3.Message{Size: 10, UIDL: u})
		}
		return &mergedPart{number: number, md: md}
	}
	m := &mergedDrop{log: zap.NewNop(), parts: []*mergedPart{part(0, "s1-a", "b"), part(1, "a", "c")}}
	m.list(nil)
	var got []string
	for _, msg := range m.List() {
		got = append(got, msg.UIDL)
	}
	if want := []string{"s1-a", "b", "s1-c"}; !slices.Equal(got, want) {
		t.Errorf("listed %v, want %v", got, want)
	}
	if want := []mergedRef{{0, 1}, {0, 2}, {1, 2}}; !slices.Equal(m.at, want) {
		t.Errorf("message numbers map to %v, want %v", m.at, want)
	}
}

// TestMergedTrashAsSource: under the move policy, DELE of a message of a
// source that is the Trash itself is refused with [SYS/PERM] and changes
// nothing there; the DELEs of the other sources are carried out.
func TestMergedTrashAsSource(t *testing.T) {
	up := memUpstream(t)
	seedBox(up, "INBOX", 2)
	seedBox(up, "Trash", 1)
	e := newEnv(t, up, mergeSources(up, false, "INBOX", "Trash"))
	trash := up.box.Messages("Trash")
	c := e.session("")
	c.ok("DELE 1")
	c.ok("DELE 3")
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/PERM]") || !strings.Contains(q, "Trash") {
		t.Errorf("QUIT = %q, want -ERR [SYS/PERM] naming the Trash", q)
	}
	assertSubjects(t, "INBOX", up.box.Messages("INBOX"), "INBOX 2")
	if got := up.box.Messages("Trash"); len(got) != 2 || !sameMessages(got[:1], trash) {
		t.Errorf("Trash holds %q, want Trash 1 as it was, then INBOX 1", subjects(got))
	}
}

// TestMergedSourcesConnectAtOnce: the sources of a merged maildrop are
// connected together, not one after another: while the first source's
// SELECT hangs, the second source is selected all the same.
func TestMergedSourcesConnectAtOnce(t *testing.T) {
	up := memUpstream(t)
	up.box.Create("Junk")
	seedBox(up, "INBOX", 1)
	seedBox(up, "Junk", 1)
	e := newEnv(t, up, mergeSources(up, false, "Junk", "INBOX"))
	release := up.mem.Block("SELECT Junk")
	defer release()
	type result struct {
		c    *popConn
		resp string
	}
	done := make(chan result, 1)
	go func() {
		c := dialPOP(t, e.addr)
		c.send("USER %s", up.user)
		c.line()
		c.send("PASS %s", up.pass)
		done <- result{c, c.line()}
	}()
	// Each source has a connection of its own (Junk's selects INBOX at
	// its login, then Junk): two LOGINs mean the second source did not
	// wait for the first.
	selected := func() bool { return len(up.mem.CommandsNamed("LOGIN")) >= 2 }
	deadline := time.Now().Add(10 * time.Second)
	for !selected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !selected() {
		t.Error("INBOX's source did not log in while Junk's SELECT hung: the sources connect one after another")
	}
	release()
	r := <-done
	if !strings.HasPrefix(r.resp, "+OK") {
		t.Fatalf("PASS = %q", r.resp)
	}
	if n := len(r.c.uidls()); n != 2 {
		t.Errorf("%d messages listed, want 2", n)
	}
	r.c.quit()
}
