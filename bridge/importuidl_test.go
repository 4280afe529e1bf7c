package bridge

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/upstream"
)

// oldMsg is one message of the fake old POP3 server.
type oldMsg struct {
	uidl string
	raw  []byte
	size int64 // LIST size; 0: len(raw)
}

// fakeOld is an old POP3 server over the pop3 package: a fixed maildrop,
// and a record of what its clients did that would change it.
type fakeOld struct {
	msgs []oldMsg
	mu   sync.Mutex
	retr int // RETRs
	dele int // messages deleted at a QUIT
}

func (f *fakeOld) Login(ctx context.Context, ci *pop3.ConnInfo, user, pass string) (pop3.Maildrop, error) {
	if user != "old" || pass != "oldpass" {
		return nil, pop3.ErrAuthFailed
	}
	return &fakeOldDrop{f: f}, nil
}

type fakeOldDrop struct{ f *fakeOld }

func (d *fakeOldDrop) List() []pop3.Message {
	var out []pop3.Message
	for _, m := range d.f.msgs {
		size := m.size
		if size == 0 {
			size = int64(len(m.raw))
		}
		out = append(out, pop3.Message{Size: size, UIDL: m.uidl})
	}
	return out
}

func (d *fakeOldDrop) Retr(ctx context.Context, n int, w pop3.MessageWriter) error {
	d.f.mu.Lock()
	d.f.retr++
	d.f.mu.Unlock()
	_, err := w.Write(d.f.msgs[n-1].raw)
	return err
}

func (d *fakeOldDrop) Top(ctx context.Context, n, lines int, w pop3.MessageWriter) error {
	raw := d.f.msgs[n-1].raw
	i := bytes.Index(raw, []byte("\r\n\r\n"))
	out := raw[:i+4]
	body := raw[i+4:]
	for k := 0; k < lines && len(body) > 0; k++ {
		j := bytes.IndexByte(body, '\n')
		if j < 0 {
			j = len(body) - 1
		}
		out = append(out[:len(out):len(out)], body[:j+1]...)
		body = body[j+1:]
	}
	_, err := w.Write(out)
	return err
}

func (d *fakeOldDrop) Commit(ctx context.Context, deleted []int) error {
	d.f.mu.Lock()
	d.f.dele += len(deleted)
	d.f.mu.Unlock()
	return nil
}

func (d *fakeOldDrop) Close() error { return nil }

// start serves f on loopback and returns its pop3:// URL.
func (f *fakeOld) start(t *testing.T) string {
	t.Helper()
	srv := pop3.NewServer(f, zaptest.NewLogger(t))
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "pop3://" + ln.Addr().String()
}

// importEnv is a memory upstream, a state file and a fake old server.
type importEnv struct {
	t   *testing.T
	e   *env
	old *fakeOld
	url string
}

// importMsg builds a message with the given Message-ID, Date and body.
func importMsg(id, date, body string) []byte {
	return []byte("From: a@example.com\r\nSubject: s\r\nMessage-ID: <" + id + "@example.com>\r\nDate: " + date + "\r\n\r\n" + body)
}

const importDate = "Tue, 24 Nov 2026 10:00:00 +0000"

func newImportEnv(t *testing.T) *importEnv {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	e := prepareBridge(t, up)
	t.Cleanup(e.stop)
	return &importEnv{t: t, e: e, old: &fakeOld{}}
}

// run imports with a bridge of its own on the env's state file (popbridge
// not serving).
func (ie *importEnv) run(opt ImportOptions) *ImportReport {
	ie.t.Helper()
	rep, err := ie.try(opt)
	if err != nil {
		ie.t.Fatalf("import: %v", err)
	}
	return rep
}

func (ie *importEnv) try(opt ImportOptions) (*ImportReport, error) {
	ie.t.Helper()
	if ie.url == "" {
		ie.url = ie.old.start(ie.t)
	}
	st, err := boltstore.Open(ie.e.statePath, nil)
	if err != nil {
		ie.t.Fatal(err)
	}
	defer st.Close()
	b, err := NewBridge(ie.e.cfg, st, zaptest.NewLogger(ie.t))
	if err != nil {
		ie.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	old, err := DialOldPOP3(ctx, OldPOP3Options{URL: ie.url, User: "old", Password: "oldpass"})
	if err != nil {
		ie.t.Fatal(err)
	}
	defer old.Close()
	return b.ImportUIDLs(ctx, ie.e.up.user, ie.e.up.pass, old, opt)
}

// record returns the stored mailbox record of the account.
func (ie *importEnv) record() *state.Mailbox {
	ie.t.Helper()
	st, err := boltstore.Open(ie.e.statePath, nil)
	if err != nil {
		ie.t.Fatal(err)
	}
	defer st.Close()
	m, err := st.LoadMailbox(context.Background(), MailboxKey(ie.e.cfg.Upstream.Name, ie.e.up.user, ie.e.cfg.Upstream.Mailbox))
	if err != nil {
		ie.t.Fatal(err)
	}
	return m
}

// uidls logs in through popbridge and returns the UIDLs it lists.
func (ie *importEnv) uidls() []string {
	ie.t.Helper()
	ie.e.start()
	defer ie.e.stop()
	c := ie.e.session("")
	u := c.uidls()
	c.quit()
	return u
}

// importCorpus fills the upstream and the old server: three messages that
// match (one alone, two told apart by content only), two identical twins
// (ambiguous), one gone from the upstream and one whose size differs
// (unmatched), one whose old UIDL is too long (invalid), and one that only
// the upstream has.
func importCorpus(ie *importEnv) {
	box := ie.e.up.box
	alone := importMsg("alone", importDate, "alone\r\n")
	tieA := importMsg("tie", importDate, "body A\r\n")
	tieB := importMsg("tie", importDate, "body B\r\n")
	twin := importMsg("twin", importDate, "same\r\n")
	sized := importMsg("sized", importDate, "sized\r\n")
	longU := importMsg("long", importDate, "long\r\n")
	newOnly := importMsg("new", importDate, "new\r\n")
	for _, raw := range [][]byte{alone, tieB, tieA, twin, twin, sized, longU, newOnly} {
		box.Append("INBOX", raw)
	}
	ie.old.msgs = []oldMsg{
		{uidl: "OLD-alone", raw: alone},
		{uidl: "OLD-tieA", raw: tieA},
		{uidl: "OLD-tieB", raw: tieB},
		{uidl: "OLD-twin1", raw: twin},
		{uidl: "OLD-twin2", raw: twin},
		{uidl: "OLD-gone", raw: importMsg("gone", importDate, "gone\r\n")},
		{uidl: "OLD-sized", raw: sized, size: int64(len(sized)) + 1},
		{uidl: strings.Repeat("L", 71), raw: longU},
	}
}

func TestImportUIDLCounts(t *testing.T) {
	ie := newImportEnv(t)
	importCorpus(ie)
	rep := ie.run(ImportOptions{})
	want := ImportReport{Old: 8, Upstream: 8, Matched: 3, Imported: 3, Ambiguous: 2, Unmatched: 2, Invalid: 1, Stored: true}
	if got := countsOf(rep); got != countsOf(&want) {
		t.Fatalf("report %+v, want %+v\nnotes:\n%s", got, countsOf(&want), strings.Join(rep.Notes, "\n"))
	}
	// Upstream order: alone, tieB, tieA, twin, twin, sized, long, new.
	got := ie.uidls()
	if len(got) != 8 {
		t.Fatalf("popbridge lists %d messages: %q", len(got), got)
	}
	if got[0] != "OLD-alone" || got[1] != "OLD-tieB" || got[2] != "OLD-tieA" {
		t.Errorf("imported UIDLs %q, want OLD-alone, OLD-tieB, OLD-tieA", got[:3])
	}
	uv := ie.record().UIDValidity
	for i := 3; i < 8; i++ {
		if want := ie.e.cfg.UIDL.Format.Format(uint32(i+1), uv); got[i] != want {
			t.Errorf("message %d: UIDL %q, want popbridge's %q", i+1, got[i], want)
		}
	}
	assertUnique(t, got)
	if ie.old.retr != 0 || ie.old.dele != 0 {
		t.Errorf("the old server saw %d RETR and %d deletions", ie.old.retr, ie.old.dele)
	}
	for _, c := range ie.e.up.mem.Commands() {
		switch c.Name {
		case "STORE", "UID STORE", "EXPUNGE", "UID EXPUNGE", "COPY", "UID COPY", "MOVE", "UID MOVE", "CLOSE":
			t.Errorf("import sent %q upstream", c.Line)
		case "FETCH", "UID FETCH":
			if strings.Contains(strings.ToUpper(c.Line), "BODY[") {
				t.Errorf("import fetched without PEEK: %q", c.Line)
			}
		}
	}
	// A message that arrives later gets popbridge's UIDL.
	ie.e.up.box.Append("INBOX", importMsg("later", importDate, "later\r\n"))
	got = ie.uidls()
	if want := ie.e.cfg.UIDL.Format.Format(9, uv); len(got) != 9 || got[8] != want {
		t.Fatalf("after a new message: %q, want the last to be %q", got, want)
	}
	if got[0] != "OLD-alone" {
		t.Errorf("the imported UIDL changed at a later login: %q", got[0])
	}
}

// countsOf is the report without its notes, for comparing and printing.
func countsOf(r *ImportReport) string {
	c := *r
	c.Notes = nil
	return fmt.Sprintf("%+v", c)
}

func assertUnique(t *testing.T, uidls []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, u := range uidls {
		if seen[u] {
			t.Errorf("UIDL %q listed twice: %q", u, uidls)
		}
		seen[u] = true
		if !validUIDL(u) {
			t.Errorf("UIDL %q is not valid", u)
		}
	}
}

func TestImportUIDLRerunChangesNothing(t *testing.T) {
	ie := newImportEnv(t)
	importCorpus(ie)
	ie.run(ImportOptions{})
	before := ie.record()
	rep := ie.run(ImportOptions{})
	if rep.Already != 3 || rep.Imported != 0 || rep.Refused != 0 || rep.Stored {
		t.Fatalf("second run: %+v", countsOf(rep))
	}
	after := ie.record()
	if after.Version != before.Version || fmt.Sprint(after.Entries) != fmt.Sprint(before.Entries) {
		t.Fatalf("the second run changed the record:\n%v\n%v", before, after)
	}
	// And after a login, too.
	first := ie.uidls()
	rep = ie.run(ImportOptions{})
	if rep.Already != 3 || rep.Imported != 0 || rep.Stored {
		t.Fatalf("run after a login: %+v", countsOf(rep))
	}
	if again := ie.uidls(); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("UIDLs %q, then %q", first, again)
	}
}

func TestImportUIDLDryRun(t *testing.T) {
	ie := newImportEnv(t)
	importCorpus(ie)
	rep := ie.run(ImportOptions{DryRun: true})
	if rep.Imported != 3 || rep.Stored {
		t.Fatalf("dry run: %+v", countsOf(rep))
	}
	if m := ie.record(); m.Version != 0 || len(m.Entries) != 0 {
		t.Fatalf("dry run stored a record: %+v", m)
	}
	// On an existing record too.
	first := ie.uidls()
	before := ie.record()
	rep = ie.run(ImportOptions{DryRun: true, Force: true})
	if rep.Imported != 3 || rep.Overwritten != 3 || rep.Stored {
		t.Fatalf("dry run with -force: %+v", countsOf(rep))
	}
	if after := ie.record(); after.Version != before.Version || fmt.Sprint(after.Entries) != fmt.Sprint(before.Entries) {
		t.Fatalf("dry run changed the record")
	}
	if again := ie.uidls(); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("UIDLs %q, then %q", first, again)
	}
}

func TestImportUIDLForce(t *testing.T) {
	ie := newImportEnv(t)
	importCorpus(ie)
	served := ie.uidls() // a client logged in first: its UIDLs are served
	rep := ie.run(ImportOptions{})
	if rep.Refused != 3 || rep.Imported != 0 || rep.Stored {
		t.Fatalf("without -force: %+v", countsOf(rep))
	}
	if got := ie.uidls(); fmt.Sprint(got) != fmt.Sprint(served) {
		t.Fatalf("refused import changed UIDLs: %q → %q", served, got)
	}
	rep = ie.run(ImportOptions{Force: true})
	if rep.Imported != 3 || rep.Overwritten != 3 || !rep.Stored {
		t.Fatalf("with -force: %+v", countsOf(rep))
	}
	got := ie.uidls()
	if got[0] != "OLD-alone" || got[1] != "OLD-tieB" || got[2] != "OLD-tieA" {
		t.Fatalf("after -force: %q", got)
	}
	if fmt.Sprint(got[3:]) != fmt.Sprint(served[3:]) {
		t.Fatalf("-force changed unmatched UIDLs: %q → %q", served[3:], got[3:])
	}
	assertUnique(t, got)
}

// An old UIDL that popbridge's format could give a new message is never
// imported; one that an unserved message holds moves that message aside.
func TestImportUIDLCollisions(t *testing.T) {
	ie := newImportEnv(t)
	a := importMsg("a", importDate, "a\r\n")
	b := importMsg("b", importDate, "b\r\n")
	ie.e.up.box.Append("INBOX", a)
	ie.e.up.box.Append("INBOX", b)
	uv := ie.e.up.mem.UIDValidity("INBOX")
	f := ie.e.cfg.UIDL.Format
	ie.old.msgs = []oldMsg{
		{uidl: f.Format(7, uv), raw: a}, // popbridge's shape
		{uidl: "OLD-b", raw: b},
	}
	rep := ie.run(ImportOptions{Force: true})
	if rep.Conflicts != 1 || rep.Imported != 1 {
		t.Fatalf("%+v", countsOf(rep))
	}
	got := ie.uidls()
	if got[0] != f.Format(1, uv) || got[1] != "OLD-b" {
		t.Fatalf("UIDLs %q", got)
	}
}

func TestImportUIDLUnit(t *testing.T) {
	// Line ends: LF and CRLF copies of a message digest alike, and a
	// missing last line end counts as CRLF.
	crlf := []byte("a: b\r\n\r\nline\r\nend\r\n")
	for _, v := range [][]byte{crlf, []byte("a: b\n\r\nline\nend\n"), []byte("a: b\r\n\r\nline\r\nend")} {
		if contentDigest(v) != contentDigest(crlf) {
			t.Errorf("digest of %q differs from the CRLF form", v)
		}
	}
	if contentDigest([]byte("x\r\n")) == contentDigest([]byte("y\r\n")) {
		t.Error("different content, same digest")
	}
	// Split writes digest like one write.
	d := newCRLFDigest()
	d.Write([]byte("a\r"))
	d.Write([]byte("\nb\n"))
	if d.Sum() != contentDigest([]byte("a\r\nb\r\n")) {
		t.Error("a CR at the end of one write and its LF in the next are one CRLF")
	}
	if out, long := unstuff([]byte("..x\r\n...\r\ny\r\n")); string(out) != ".x\r\n..\r\ny\r\n" || long {
		t.Errorf("unstuff: %q %v", out, long)
	}
	if _, long := unstuff([]byte(strings.Repeat("x", 4096) + "\r\n")); !long {
		t.Error("a 4096-octet line is not flagged")
	}
	h := []byte("Subject: x\r\nMessage-ID:\r\n <a@b>\r\nDate: Tue, 24 Nov 2026 11:00:00 +0100\r\n\r\nMessage-ID: <body@b>\r\n")
	if v := upstream.HeaderValue(h, "message-id"); v != "<a@b>" {
		t.Errorf("Message-ID %q", v)
	}
	if k := keyOf(h, 5); k.date != "2026-11-24T10:00:00Z" || k.size != 5 {
		t.Errorf("key %+v", k)
	}
	for u, want := range map[string]bool{"": false, "a": true, strings.Repeat("a", 70): true, strings.Repeat("a", 71): false, "a b": false, "a\x7f": false} {
		if validUIDL(u) != want {
			t.Errorf("validUIDL(%q) = %v", u, !want)
		}
	}
	f := state.MustUIDLFormatter(state.DefaultUIDLFormat)
	for u, want := range map[string]bool{
		f.Format(5, 77): true, f.Format(5, 77) + "-2": true, f.Format(123456, 77): true,
		f.Format(5, 78): false, "3f2504e04f8911d39a0c0305e82c3301": false, "OLD-1": false,
	} {
		if f.MayIssue(u, 77) != want {
			t.Errorf("MayIssue(%q) = %v", u, !want)
		}
	}
}
