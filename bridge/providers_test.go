package bridge

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// simProvider is an in-process imitation of one provider's IMAP service:
// its mailboxes (names and attributes), what it permits and how it lies.
type simProvider struct {
	name    string // the profile
	auto    bool   // leave upstream.profile = "auto": recognized by the capabilities
	opts    []imaptest.Option
	boxes   map[string][]imap.MailboxAttr
	trash   string   // where the move policy must put deleted mail
	created bool     // the Trash is created by popbridge
	allMail string   // Gmail: where expunged mail stays
	skew    int64    // added to every RFC822.SIZE
	caps    []string // added to the capabilities
	keyword bool     // $POP3Deleted is accepted
}

var exchangeFlags = []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft}

var simProviders = []simProvider{
	{name: "gmail", auto: true,
		opts:  []imaptest.Option{imaptest.WithAllMail("[Gmail]/All Mail"), imaptest.WithMaxLogins(15)},
		boxes: map[string][]imap.MailboxAttr{"[Gmail]/Trash": {imap.MailboxAttrTrash}, "[Gmail]/All Mail": {imap.MailboxAttrAll}, "[Gmail]/Sent Mail": {imap.MailboxAttrSent}},
		trash: "[Gmail]/Trash", allMail: "[Gmail]/All Mail", keyword: true, caps: []string{"X-GM-EXT-1"}},
	{name: "microsoft365",
		opts:  []imaptest.Option{imaptest.WithPermanentFlags(exchangeFlags...), imaptest.WithMaxLogins(20)},
		boxes: map[string][]imap.MailboxAttr{"Deleted Items": {imap.MailboxAttrTrash}, "Sent Items": {imap.MailboxAttrSent}},
		trash: "Deleted Items", skew: 37},
	{name: "outlook",
		opts:  []imaptest.Option{imaptest.WithPermanentFlags(exchangeFlags...)},
		boxes: map[string][]imap.MailboxAttr{"Deleted": nil, "Sent": nil},
		trash: "Deleted", skew: -11},
	{name: "icloud",
		boxes: map[string][]imap.MailboxAttr{"Deleted Messages": nil, "Sent Messages": nil},
		trash: "Deleted Messages", keyword: true},
	{name: "yahoo",
		boxes: map[string][]imap.MailboxAttr{"Trash": {imap.MailboxAttrTrash}, "Bulk": {imap.MailboxAttrJunk}},
		trash: "Trash", keyword: true},
	{name: "fastmail",
		boxes: map[string][]imap.MailboxAttr{"Trash": {imap.MailboxAttrTrash}, "Archive": {imap.MailboxAttrArchive}},
		trash: "Trash", keyword: true},
	// A Dovecot as Debian ships it: no Trash at all.
	{name: "generic", auto: true,
		boxes: map[string][]imap.MailboxAttr{"Sent": nil},
		trash: "Trash", created: true, keyword: true},
}

// start starts the imitation and returns it as an upstream of the
// end-to-end tests (through a proxy that falsifies RFC822.SIZE when skew
// is set) and a configuration mutator with its profile.
func (p simProvider) start(t *testing.T) (*upstreamEnv, func(*Config)) {
	mem := imaptest.NewMemServer(t, p.opts...)
	for name, attrs := range p.boxes {
		mem.Create(name, attrs...)
	}
	addr := mem.Addr
	if p.skew != 0 {
		addr = imaptest.SkewSizes(t, addr, p.skew)
	}
	if p.caps != nil {
		addr = imaptest.AddCaps(t, addr, p.caps...)
	}
	up := &upstreamEnv{name: p.name, addr: addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	return up, func(c *Config) {
		if !p.auto {
			c.Upstream.Profile = p.name
		}
	}
}

// TestProvidersDefaultConfig: with the default configuration but the
// profile, and each delete policy, DELE + QUIT succeeds on every imitated
// provider and does what the policy says there; LIST sizes are the octets
// RETR sends from the first LIST, where the provider's RFC822.SIZE is
// wrong too.
func TestProvidersDefaultConfig(t *testing.T) {
	for _, p := range simProviders {
		for _, policy := range []string{PolicyMove, PolicyExpunge, PolicyFlag, PolicyHide} {
			t.Run(p.name+"/"+policy, func(t *testing.T) {
				up, profile := p.start(t)
				seed(up, 3)
				e := newEnv(t, up, profile, func(c *Config) { c.Delete.Policy = Policy(policy) })
				c := e.session("laptop")
				list := c.list()
				if len(list) != 3 {
					t.Fatalf("LIST has %d messages, want 3", len(list))
				}
				for _, l := range list {
					if got := int64(len(c.retr(l.n))); got != l.size {
						t.Errorf("message %d: LIST says %d octets, RETR sent %d", l.n, l.size, got)
					}
				}
				c.ok("DELE 2")
				if q := c.quit(); !strings.HasPrefix(q, "+OK") {
					t.Fatalf("QUIT = %q", q)
				}
				inbox := up.box.Messages("INBOX")
				switch policy {
				case PolicyMove:
					assertSubjects(t, "INBOX", inbox, "message 1", "message 3")
					assertSubjects(t, p.trash, up.box.Messages(p.trash), "message 2")
					if p.allMail != "" {
						assertSubjects(t, p.allMail, up.box.Messages(p.allMail))
					}
				case PolicyExpunge:
					assertSubjects(t, "INBOX", inbox, "message 1", "message 3")
					if p.allMail != "" {
						// Gmail: expunge archives (check and the log say so).
						assertSubjects(t, p.allMail, up.box.Messages(p.allMail), "message 2")
					}
				case PolicyFlag, PolicyHide:
					assertSubjects(t, "INBOX", inbox, "message 1", "message 2", "message 3")
					m := inbox[1]
					wantSeen := policy == PolicyFlag
					wantKeyword := policy == PolicyFlag && p.keyword
					if m.HasFlag(imap.FlagSeen) != wantSeen || m.HasFlag("$POP3Deleted") != wantKeyword || m.HasFlag(imap.FlagDeleted) {
						t.Errorf("message 2 flags %v, want \\Seen %v, $POP3Deleted %v, no \\Deleted", m.Flags, wantSeen, wantKeyword)
					}
				}
				if p.created && policy == PolicyMove {
					if got := up.mem.CommandsNamed("CREATE"); len(got) != 1 {
						t.Errorf("CREATE commands %v, want one", got)
					}
				} else if got := up.mem.CommandsNamed("CREATE"); len(got) != 0 {
					t.Errorf("popbridge created a mailbox: %v", got)
				}
				// The device no longer lists it, whatever the policy.
				c = e.session("laptop")
				if n := len(c.list()); n != 2 {
					t.Errorf("after DELE 2 + QUIT the device lists %d messages, want 2", n)
				}
				c.quit()
				for _, cmd := range up.mem.CommandsNamed("EXPUNGE", "CLOSE") {
					t.Errorf("popbridge sent %q", cmd.Line)
				}
			})
		}
	}
}

// TestProviderCheck: `popbridge check` names the profile, the Trash, the
// flags permitted and the budget of each imitated provider.
func TestProviderCheck(t *testing.T) {
	for _, p := range simProviders {
		t.Run(p.name, func(t *testing.T) {
			up, profile := p.start(t)
			cfg := DefaultConfig()
			cfg.Upstream.Address = up.addr
			cfg.Upstream.Security = upstream.SecurityNone
			profile(&cfg)
			var out strings.Builder
			if err := Check(t.Context(), cfg, up.user, up.pass, &out, nil); err != nil {
				t.Fatalf("Check: %v\n%s", err, out.String())
			}
			want := []string{"profile: " + p.name, "trash: " + p.trash}
			if p.created {
				want = append(want, "trash: Trash (none found; created at the first deletion)")
			}
			if p.name == "gmail" {
				want = append(want, "connection budget: 15 upstream connections per account")
			}
			if p.skew != 0 {
				want = append(want, "sizes: measured")
			}
			for _, w := range want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("check output lacks %q:\n%s", w, out.String())
				}
			}
			cfg.Delete.Policy = PolicyFlag
			out.Reset()
			if err := Check(t.Context(), cfg, up.user, up.pass, &out, nil); err != nil {
				t.Fatalf("Check: %v\n%s", err, out.String())
			}
			flags := `the flag policy sets \Seen $POP3Deleted`
			if !p.keyword {
				flags = `the flag policy sets \Seen` + "\n"
			}
			if !strings.Contains(out.String(), flags) {
				t.Errorf("check output lacks %q:\n%s", flags, out.String())
			}
			if !p.keyword && !strings.Contains(out.String(), "advice: the server does not keep $POP3Deleted") {
				t.Errorf("check gives no advice on the refused keyword:\n%s", out.String())
			}
			if p.name == "gmail" {
				cfg.Delete.Policy = PolicyExpunge
				out.Reset()
				if err := Check(t.Context(), cfg, up.user, up.pass, &out, nil); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(out.String(), "expunge: does NOT delete here") || !strings.Contains(out.String(), "All Mail") {
					t.Errorf("check does not say that expunge archives on Gmail:\n%s", out.String())
				}
			}
		})
	}
}

// TestSizesMeasuredAfterMismatch: on a server without a profile that says
// so, a RETR that finds RFC822.SIZE wrong makes popbridge measure every
// message new to the record from the next sync on: its first LIST is
// exact, and the measured size is what the record keeps.
func TestSizesMeasuredAfterMismatch(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	addr := imaptest.SkewSizes(t, mem.Addr, 5)
	up := &upstreamEnv{name: "skewed", addr: addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 1)
	e := newEnv(t, up)
	c := e.session("")
	first := c.list()
	got := int64(len(c.retr(1)))
	if first[0].size != got+5 {
		t.Fatalf("the skewed server's first size is %d, RETR sent %d: the test's premise fails", first[0].size, got)
	}
	c.quit()
	mem.Append("INBOX", message("late", "late", "a late message\r\n"))
	c = e.session("")
	list := c.list()
	if len(list) != 2 {
		t.Fatalf("LIST has %d messages, want 2", len(list))
	}
	for _, l := range list {
		if r := int64(len(c.retr(l.n))); r != l.size {
			t.Errorf("message %d: LIST says %d octets, RETR sent %d", l.n, l.size, r)
		}
	}
	c.quit()
}

// TestConnectionBudget: an account holds at most
// upstream.max_connections_per_account upstream connections; a login
// beyond it waits, then is refused with [SYS/TEMP] before the upstream
// hears of it (the server's own limit, which answers LOGIN with NO and
// counts against the account, is never reached); a login that waits while
// a session ends gets its place.
func TestConnectionBudget(t *testing.T) {
	mem := imaptest.NewMemServer(t, imaptest.WithMaxLogins(2))
	mem.Create("Trash", imap.MailboxAttrTrash)
	up := &upstreamEnv{name: "mem", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 1)
	e := newEnv(t, up, func(c *Config) {
		c.Upstream.MaxConnectionsPerAccount = 2
		c.Upstream.Timeout = time.Second // how long the third login queues
	})
	a, b := e.session("a"), e.session("b")
	c := dialPOP(t, e.addr)
	c.ok("USER %s#c", up.user)
	if got := c.cmd("PASS %s", up.pass); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("a third session's login = %q, want -ERR [SYS/TEMP]", got)
	}
	if n := mem.RefusedLogins(); n != 0 {
		t.Errorf("the upstream refused %d logins for too many connections", n)
	}
	// A login that queues while a session ends gets in.
	c = dialPOP(t, e.addr)
	c.ok("USER %s#c", up.user)
	c.send("PASS %s", up.pass)
	a.quit()
	if got := c.line(); !strings.HasPrefix(got, "+OK") {
		t.Errorf("a queued login after a QUIT = %q, want +OK", got)
	}
	c.quit()
	b.quit()
	if n := mem.RefusedLogins(); n != 0 {
		t.Errorf("the upstream refused %d logins for too many connections", n)
	}
}

// TestThrottledBackoff: a throttling answer at login becomes
// -ERR [LOGIN-DELAY], and the account's logins wait out the server's
// suggested back-off without reaching the upstream; once it has passed,
// logins work again. A throttling during RETR is -ERR [SYS/TEMP], with no
// reconnect.
func TestThrottledBackoff(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	up := &upstreamEnv{name: "mem", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 2)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e := startBridge(t, up, withClock(func() time.Time { return now }))

	login := func() string {
		c := dialPOP(t, e.addr)
		defer c.drop()
		c.ok("USER %s", up.user)
		return c.cmd("PASS %s", up.pass)
	}
	mem.Fail("SELECT", imaptest.ErrThrottled) // 120000 ms suggested
	if got := login(); !strings.HasPrefix(got, "-ERR [LOGIN-DELAY]") {
		t.Errorf("login while throttled = %q, want -ERR [LOGIN-DELAY]", got)
	}
	mem.Fail("SELECT", nil)
	logins := len(mem.CommandsNamed("LOGIN"))
	now = now.Add(119 * time.Second)
	if got := login(); !strings.HasPrefix(got, "-ERR [LOGIN-DELAY]") {
		t.Errorf("login within the back-off = %q, want -ERR [LOGIN-DELAY]", got)
	}
	if n := len(mem.CommandsNamed("LOGIN")); n != logins {
		t.Errorf("a login within the back-off reached the upstream (%d LOGINs, want %d)", n, logins)
	}
	now = now.Add(2 * time.Second)
	c := e.session("")
	mem.Fail("FETCH", imaptest.ErrGmailThrottled)
	dials := len(mem.CommandsNamed("LOGIN"))
	if got := c.cmd("RETR 1"); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("RETR while throttled = %q, want -ERR [SYS/TEMP]", got)
	}
	if n := len(mem.CommandsNamed("LOGIN")); n != dials {
		t.Errorf("popbridge reconnected to a server that throttles (%d LOGINs, want %d)", n, dials)
	}
	mem.Fail("FETCH", nil)
	c.quit()
}

// TestRecognizeProfile: the profile from the host name, the capabilities,
// the ID answer, or the configuration.
func TestRecognizeProfile(t *testing.T) {
	has := func(caps ...string) func(string) bool {
		return func(c string) bool {
			for _, x := range caps {
				if strings.EqualFold(x, c) {
					return true
				}
			}
			return false
		}
	}
	for _, tc := range []struct {
		setting, host string
		caps          []string
		id            upstream.ServerID
		want          string
	}{
		{"auto", "imap.gmail.com", nil, upstream.ServerID{}, "gmail"},
		{"auto", "mail.example.com", []string{"IMAP4rev1", "X-GM-EXT-1"}, upstream.ServerID{}, "gmail"},
		{"auto", "outlook.office365.com", nil, upstream.ServerID{}, "microsoft365"},
		{"auto", "mail.example.com", nil, upstream.ServerID{Name: "Microsoft Exchange"}, "microsoft365"},
		{"auto", "imap-mail.outlook.com", nil, upstream.ServerID{}, "outlook"},
		{"auto", "imap.mail.me.com", nil, upstream.ServerID{}, "icloud"},
		{"auto", "p02-imap.mail.me.com", nil, upstream.ServerID{}, "icloud"},
		{"auto", "imap.mail.yahoo.com", nil, upstream.ServerID{}, "yahoo"},
		{"auto", "imap.fastmail.com", nil, upstream.ServerID{}, "fastmail"},
		{"auto", "IMAP.GMAIL.COM.", nil, upstream.ServerID{}, "gmail"},
		{"auto", "mail.example.com", []string{"IMAP4rev1"}, upstream.ServerID{Name: "Dovecot"}, "generic"},
		{"yahoo", "mail.example.com", nil, upstream.ServerID{}, "yahoo"},
		{"generic", "imap.gmail.com", nil, upstream.ServerID{}, "generic"},
	} {
		if got := resolveProfile(tc.setting, tc.host, has(tc.caps...), tc.id); got.Name != tc.want {
			t.Errorf("resolveProfile(%q, %q, %v, %v) = %s, want %s", tc.setting, tc.host, tc.caps, tc.id, got.Name, tc.want)
		}
	}
	if _, err := ParseConfig("[upstream]\naddress = \"a:993\"\nprofile = \"hotmail\"\n"); err == nil || !strings.Contains(err.Error(), "upstream.profile") {
		t.Errorf("an unknown profile: %v", err)
	}
}

// listerOf answers Mailboxes with a fixed list.
type listerOf []upstream.MailboxInfo

func (l listerOf) Mailboxes(context.Context) ([]upstream.MailboxInfo, error) { return l, nil }

// TestFindTrash: the choice of the move policy's mailbox in each case.
func TestFindTrash(t *testing.T) {
	box := func(name string, delim rune, attrs ...string) upstream.MailboxInfo {
		return upstream.MailboxInfo{Name: name, Delim: delim, Attrs: attrs}
	}
	for i, tc := range []struct {
		moveTo  string
		profile string
		list    []upstream.MailboxInfo
		want    trashChoice
	}{
		{"Bin", "", []upstream.MailboxInfo{box("Trash", '/', `\Trash`)}, trashChoice{Name: "Bin", How: "delete.move_to"}},
		{"", "", []upstream.MailboxInfo{box("INBOX", '/'), box("Trash", '/'), box("Papierkorb", '/', `\Trash`)}, trashChoice{Name: "Papierkorb", How: `\Trash special-use`}},
		{"", "", []upstream.MailboxInfo{box("INBOX", '/'), box("Old", '/', `\Trash`, `\Noselect`), box("trash", '/')}, trashChoice{Name: "trash", How: "by name"}},
		{"", "icloud", []upstream.MailboxInfo{box("INBOX", '/'), box("Deleted Messages", '/'), box("Trash", '/')}, trashChoice{Name: "Deleted Messages", How: "by name"}},
		{"", "", []upstream.MailboxInfo{box("INBOX", '.'), box("INBOX.Sent", '.'), box("INBOX.trash", '.')}, trashChoice{Name: "INBOX.trash", How: "by name"}},
		{"", "", []upstream.MailboxInfo{box("INBOX", '/'), box("[Gmail]", '/', `\Noselect`), box("[Gmail]/Trash", '/')}, trashChoice{Name: "[Gmail]/Trash", How: "by name"}},
		{"", "", []upstream.MailboxInfo{box("INBOX", '/'), box("Sent", '/')}, trashChoice{Name: "Trash", How: "to be created", Create: true}},
		{"", "", []upstream.MailboxInfo{box("INBOX", '.'), box("INBOX.Sent", '.')}, trashChoice{Name: "INBOX.Trash", How: "to be created", Create: true}},
	} {
		got, err := findTrash(t.Context(), listerOf(tc.list), tc.moveTo, profileNamed(tc.profile))
		if err != nil || got != tc.want {
			t.Errorf("case %d: findTrash = %+v, %v; want %+v", i, got, err, tc.want)
		}
	}
}

// TestPermittedFlags: keywords only where PERMANENTFLAGS allow them;
// \Seen when nothing is left; never \Deleted.
func TestPermittedFlags(t *testing.T) {
	exchange := []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`}
	for i, tc := range []struct {
		configured, perm []string
		want, refused    string
	}{
		{[]string{`\Seen`, "$POP3Deleted"}, exchange, `\Seen`, "$POP3Deleted"},
		{[]string{"$POP3Deleted"}, exchange, `\Seen`, "$POP3Deleted"},
		{[]string{"$POP3Deleted"}, []string{`\Seen`, "$pop3deleted"}, "$POP3Deleted", ""},
		{[]string{`\Seen`, "$POP3Deleted"}, []string{`\*`}, `\Seen $POP3Deleted`, ""},
		{[]string{`\Seen`, "$POP3Deleted"}, nil, `\Seen $POP3Deleted`, ""},
		{[]string{"$A", "$B"}, []string{`\Seen`, "$B"}, "$B", "$A"},
	} {
		got := permittedFlags(tc.configured, tc.perm)
		if strings.Join(got.Flags, " ") != tc.want || strings.Join(got.Refused, " ") != tc.refused {
			t.Errorf("case %d: permittedFlags = %+v, want %q refused %q", i, got, tc.want, tc.refused)
		}
		for _, f := range got.Flags {
			if strings.EqualFold(f, `\Deleted`) {
				t.Errorf("case %d: the flag policy would set \\Deleted", i)
			}
		}
	}
}

// TestDovecotWithoutTrash: on a real Dovecot account that has no Trash
// mailbox (Debian's Dovecot auto-creates none), DELE + QUIT with the
// default configuration succeeds: popbridge creates Trash and moves the
// message there; a second deletion uses the Trash it created.
func TestDovecotWithoutTrash(t *testing.T) {
	addr := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR")
	domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_NOTRASH_DOMAIN")
	if addr == "" || domain == "" {
		t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR and _NOTRASH_DOMAIN (see .ci/dovecot-start)")
	}
	user := freshUser(domain)
	admin := imaptest.NewAdmin(t, addr, user, "pass")
	up := &upstreamEnv{name: "dovecot", addr: addr, user: user, pass: "pass", box: admin}
	seed(up, 3)
	e := newEnv(t, up)
	var out strings.Builder
	if err := Check(t.Context(), e.cfg, user, "pass", &out, nil); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "trash: Trash (none found; created at the first deletion)") {
		t.Fatalf("the account has a Trash already, or check does not say it will be created:\n%s", out.String())
	}
	for _, n := range []int{1, 1} {
		c := e.session("")
		list := c.list()
		for _, l := range list {
			if got := int64(len(c.retr(l.n))); got != l.size {
				t.Errorf("message %d: LIST says %d octets, RETR sent %d", l.n, l.size, got)
			}
		}
		c.ok("DELE %d", n)
		if q := c.quit(); !strings.HasPrefix(q, "+OK") {
			t.Fatalf("QUIT = %q", q)
		}
	}
	assertSubjects(t, "INBOX", admin.Messages("INBOX"), "message 3")
	assertSubjects(t, "Trash", admin.Messages("Trash"), "message 1", "message 2")
}

// TestRealClientProviders: curl and fetchmail fetch and delete through
// popbridge from the imitated providers whose defaults used to fail (a
// Dovecot without Trash, iCloud's unmarked Trash, Exchange's refused
// keywords and wrong sizes, Gmail's archiving expunge), under each delete
// policy: every message arrives byte for byte, the deletion reaches the
// upstream as the policy says, and the device no longer gets them.
func TestRealClientProviders(t *testing.T) {
	for _, c := range realClients {
		if c.name != "curl" && c.name != "fetchmail" {
			continue
		}
		for _, p := range simProviders {
			if p.name != "generic" && p.name != "icloud" && p.name != "microsoft365" && p.name != "gmail" {
				continue
			}
			for _, policy := range []string{PolicyMove, PolicyExpunge, PolicyFlag, PolicyHide} {
				t.Run(c.name+"/"+p.name+"/"+policy, func(t *testing.T) {
					if _, err := exec.LookPath(c.bin); err != nil {
						t.Skipf("%s is not installed (.ci/run installs it)", c.bin)
					}
					t.Parallel()
					up, profile := p.start(t)
					corpus := clientCorpus(c.longLine)
					for _, i := range []int{0, 1, 2, 5} {
						up.box.Append("INBOX", corpus[i])
					}
					stored := up.box.Messages("INBOX")
					e := newEnv(t, up, profile, func(cfg *Config) { cfg.Delete.Policy = Policy(policy) })
					r := newClientRunner(t, c, e, c.name)
					got, out := r.run(false)
					checkDelivered(t, c, "delete run", got, stored, out)
					inbox := up.box.Messages("INBOX")
					switch policy {
					case PolicyMove:
						assertSubjects(t, "INBOX", inbox)
						if got, want := rawSet(up.box.Messages(p.trash)), rawSet(stored); !slices.Equal(got, want) {
							t.Errorf("%s does not hold exactly the messages INBOX held", p.trash)
						}
					case PolicyExpunge:
						assertSubjects(t, "INBOX", inbox)
					case PolicyFlag, PolicyHide:
						assertSubjects(t, "INBOX", inbox, subjects(stored)...)
						for _, m := range inbox {
							if m.HasFlag(imap.FlagSeen) != (policy == PolicyFlag) || m.HasFlag("$POP3Deleted") != (policy == PolicyFlag && p.keyword) {
								t.Errorf("%s policy: UID %d has flags %v", policy, m.UID, m.Flags)
							}
						}
					}
					r.forget()
					if got, out := r.run(false); len(got) != 0 {
						t.Errorf("second run: %s fetched %d messages after deleting them\n%s", c.name, len(got), out)
					}
				})
			}
		}
	}
}
