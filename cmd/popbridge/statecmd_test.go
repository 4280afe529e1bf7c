package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/popbridge/popbridge/state/stores"
)

// stateSite is an upstream and a configuration file per store.
type stateSite struct {
	t   *testing.T
	mem *imaptest.MemServer
	dir string
}

// config writes a configuration file whose [state] table is st and returns
// its path.
func (s *stateSite) config(name string, st bridge.StateConfig) string {
	s.t.Helper()
	text := `[server]
listen = "127.0.0.1:0"
[auth]
allow_insecure_auth = true
[upstream]
address = "` + s.mem.Addr + `"
security = "none"
[delete]
policy = "hide"
[state]
driver = "` + st.Driver + `"
path = "` + st.Path + `"
dsn = "` + st.DSN + `"
[log]
level = "error"
`
	p := filepath.Join(s.dir, name+".toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// serve runs popbridge in-process on the store of the configuration file
// until fn returns.
func (s *stateSite) serve(path string, fn func(addr string)) {
	s.t.Helper()
	cfg, err := bridge.LoadConfig(path)
	if err != nil {
		s.t.Fatal(err)
	}
	log := zaptest.NewLogger(s.t)
	st, err := stores.Open(s.t.Context(), cfg.State, stores.Options{MaxLocks: 8}, log)
	if err != nil {
		s.t.Fatal(err)
	}
	defer st.Close()
	srv, err := bridge.NewServer(cfg, st, log)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}()
	fn(srv.Addr().String())
}

// uidls logs in as login and returns its UIDL listing; with dele, it
// deletes message 1 (hidden: the hide policy) before QUIT.
func (s *stateSite) uidls(addr, login string, dele bool) []string {
	s.t.Helper()
	p := dialKillPOP(s.t, addr)
	p.ok("USER " + login)
	p.ok("PASS " + s.mem.Pass)
	u := p.uidl()
	if dele {
		p.ok("DELE 1")
	}
	p.ok("QUIT")
	return u
}

func runState(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := stateCmd(args, bytes.NewReader(stdin), &out)
	return out.String(), err
}

// TestStateToolsMoveSite: a site served from bbolt is exported, imported
// into PostgreSQL (into another bbolt file without a test server) and
// served from there, then moved back into a new bbolt file and served
// again: each device's UIDL listing is what it was, the hidden message
// stays hidden, and every export is byte for byte the one imported (the
// first, but for the last logins of the logins served in between).
// list, show and check read the copy; forget brings a device's hidden
// message back; check finds a corruption planted in the file with the
// store's API and fails.
func TestStateToolsMoveSite(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	for _, id := range []string{"a", "b", "c"} {
		mem.Append("INBOX", []byte("Message-ID: <"+id+"@example.com>\r\nSubject: "+id+"\r\n\r\nbody "+id+"\r\n"))
	}
	site := &stateSite{t: t, mem: mem, dir: t.TempDir()}
	boltCfg := site.config("bolt", bridge.StateConfig{Driver: "bolt", Path: filepath.Join(site.dir, "state.db")})
	other := bridge.StateConfig{Driver: "bolt", Path: filepath.Join(site.dir, "other.db")}
	if os.Getenv("POPBRIDGE_TEST_PG") != "" {
		other = bridge.StateConfig{Driver: "postgres", DSN: pgtest.Schema(t)}
	}
	otherCfg := site.config("other", other)
	t.Logf("moving from bolt to %s", other.Driver)

	phone, desk := mem.User+"#phone", mem.User
	var before map[string][]string
	site.serve(boltCfg, func(addr string) {
		site.uidls(addr, phone, true) // hides message 1 from the phone
		site.uidls(addr, desk, false)
		before = map[string][]string{phone: site.uidls(addr, phone, false), desk: site.uidls(addr, desk, false)}
	})
	if len(before[phone]) != 2 || len(before[desk]) != 3 {
		t.Fatalf("listings before the move: %q", before)
	}

	dump, err := runState(t, nil, "export", "-config", boltCfg)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(dump, "\n"); n != 1+1+3+1+1+1 { // header, mailbox, 3 entries, desk's client, phone's client, hidden
		t.Errorf("the export has %d lines:\n%s", n, dump)
	}
	if n := strings.Count(dump, `"last_login":"`); n != 2 {
		t.Errorf("the export has %d last logins, want the desk's and the phone's:\n%s", n, dump)
	}
	out, err := runState(t, []byte(dump), "import", "-config", otherCfg)
	if err != nil || !strings.Contains(out, "imported 1 mailboxes (3 entries), 2 clients (1 hidden UIDLs, 0 pending UPDATEs)") {
		t.Fatalf("import: %q %v", out, err)
	}
	if again, err := runState(t, nil, "export", "-config", otherCfg); err != nil || again != dump {
		t.Errorf("the export of the copy differs (%v):\n%s\nfrom:\n%s", err, again, dump)
	}
	site.serve(otherCfg, func(addr string) {
		for login, want := range before {
			if got := site.uidls(addr, login, false); !slices.Equal(got, want) {
				t.Errorf("%s after the move: UIDLs %q, want %q", login, got, want)
			}
		}
	})

	// And back into a new bolt file: the same records, the same listings.
	backCfg := site.config("back", bridge.StateConfig{Driver: "bolt", Path: filepath.Join(site.dir, "back.db")})
	again, err := runState(t, nil, "export", "-config", otherCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runState(t, []byte(again), "import", "-config", backCfg); err != nil {
		t.Fatal(err)
	}
	if back, err := runState(t, nil, "export", "-config", backCfg); err != nil || back != again {
		t.Errorf("the export after the way back differs (%v):\n%s\nfrom:\n%s", err, back, again)
	}
	// The logins served from the copy moved the last logins on, and
	// nothing else.
	noLogins := regexp.MustCompile(`,"last_login":"[^"]*"`)
	if noLogins.ReplaceAllString(again, "") != noLogins.ReplaceAllString(dump, "") || again == dump {
		t.Errorf("the copy's export after serving it:\n%s\nwant the first but for newer last logins:\n%s", again, dump)
	}
	site.serve(backCfg, func(addr string) {
		for login, want := range before {
			if got := site.uidls(addr, login, false); !slices.Equal(got, want) {
				t.Errorf("%s after the way back: UIDLs %q, want %q", login, got, want)
			}
		}
	})

	key, _, err := bridge.StateKey(mustConfig(t, otherCfg), phone)
	if err != nil {
		t.Fatal(err)
	}
	out, err = runState(t, nil, "list", "-config", otherCfg)
	if err != nil || !strings.Contains(out, key.Mailbox+"  entries=3 ") || !regexp.MustCompile(`device="phone" last_login=20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ hidden=1 pending=none\n`).MatchString(out) {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = runState(t, nil, "show", "-config", otherCfg, phone)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range before[phone] {
		if !strings.Contains(out, " "+u+" ") {
			t.Errorf("show %s lacks UIDL %s:\n%s", phone, u, out)
		}
	}
	if hiddenUIDL := before[desk][0]; !strings.Contains(out, "hidden: 1\n    "+hiddenUIDL+"\n") || strings.Contains(out, " "+hiddenUIDL+" ") {
		t.Errorf("show %s: the hidden UIDL %s is not shown as hidden only:\n%s", phone, hiddenUIDL, out)
	}
	if out, err := runState(t, nil, "check", "-config", otherCfg); err != nil || out != "state check: no problem\n" {
		t.Errorf("check of the copy: %q %v", out, err)
	}

	// forget: the phone sees message 1 again.
	if out, err := runState(t, nil, "forget", "-config", otherCfg, phone); err != nil || !strings.Contains(out, "1 hidden UIDLs shown again") {
		t.Errorf("forget: %q %v", out, err)
	}
	site.serve(otherCfg, func(addr string) {
		if got := site.uidls(addr, phone, false); !slices.Equal(got, before[desk]) {
			t.Errorf("%s after forget: UIDLs %q, want %q", phone, got, before[desk])
		}
	})

	// A corruption planted in the bolt file: a UIDL given twice.
	st, err := boltstore.Open(filepath.Join(site.dir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.LoadMailbox(t.Context(), key.Mailbox)
	if err != nil {
		t.Fatal(err)
	}
	dup := m.Entries[2]
	dup.UIDL = m.Entries[0].UIDL
	if _, err := st.ApplyMailbox(t.Context(), key.Mailbox, m.Version, state.MailboxChange{Markers: m.Markers, Put: []state.Entry{dup}}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	out, err = runState(t, nil, "check", "-config", boltCfg)
	if err == nil || !strings.Contains(err.Error(), "1 problem(s)") {
		t.Errorf("check of the corrupt file: %v", err)
	}
	want := `problem: mailbox "` + key.Mailbox + `": UIDL "` + m.Entries[0].UIDL + `" is given to UID ` + uidOf(m, 0) + ` and UID ` + uidOf(m, 2) + "\n"
	if out != want {
		t.Errorf("check printed %q, want %q", out, want)
	}
}

func uidOf(m *state.Mailbox, i int) string { return strconv.FormatUint(uint64(m.Entries[i].UID), 10) }

func mustConfig(t *testing.T, path string) bridge.Config {
	t.Helper()
	cfg, err := bridge.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
