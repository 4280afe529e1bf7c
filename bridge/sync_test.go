package bridge

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// syncTrace records the upstream protocol of every session (secrets
// redacted by the upstream package).
type syncTrace struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncTrace) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// commands returns the client's commands since the last call, without tags.
func (s *syncTrace) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range strings.Split(s.buf.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "C: "); ok {
			if _, cmd, ok := strings.Cut(rest, " "); ok {
				out = append(out, strings.TrimSpace(cmd))
			}
		}
	}
	s.buf.Reset()
	return out
}

func hasCommand(cmds []string, prefix string) bool {
	for _, c := range cmds {
		if strings.HasPrefix(strings.ToUpper(c), prefix) {
			return true
		}
	}
	return false
}

// expungeUpstream removes uid as another IMAP client would.
func expungeUpstream(t *testing.T, addr, user, pass string, uid uint32) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	set := imap.UIDSetNum(imap.UID(uid))
	if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(set).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

// TestSyncAsksLittle: an unchanged mailbox costs no FETCH and no SEARCH;
// new mail costs a FETCH of the new UIDs only; an expunge elsewhere costs a
// UID SEARCH, not a re-listing (state.Decide chooses the plan).
func TestSyncAsksLittle(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		seed(up, 5)
		e := newEnv(t, up)
		tr := &syncTrace{}
		e.srv.Bridge.up.Trace = tr
		c := e.session("")
		first := c.uidls()
		c.quit()
		if cmds := tr.commands(); !hasCommand(cmds, "UID FETCH 1:*") {
			t.Errorf("the first login did not list the mailbox: %q", cmds)
		}

		c = e.session("")
		if got := c.uidls(); strings.Join(got, " ") != strings.Join(first, " ") {
			t.Errorf("UIDLs changed: %v -> %v", first, got)
		}
		c.quit()
		cmds := tr.commands()
		if hasCommand(cmds, "UID FETCH") || hasCommand(cmds, "UID SEARCH") {
			t.Errorf("an unchanged mailbox was asked: %q", cmds)
		}
		if up.name == "dovecot" && !hasCommand(cmds, "SELECT INBOX (CONDSTORE)") {
			t.Errorf("CONDSTORE is offered but not used: %q", cmds)
		}

		stored := up.box.Messages("INBOX")
		next := stored[len(stored)-1].UID + 1
		up.box.Append("INBOX", message("new1", "new 1", "x\r\n"))
		up.box.Append("INBOX", message("new2", "new 2", "y\r\n"))
		c = e.session("")
		got := c.uidls()
		c.quit()
		if len(got) != 7 || strings.Join(got[:5], " ") != strings.Join(first, " ") {
			t.Errorf("after new mail: %v", got)
		}
		cmds = tr.commands()
		if !hasCommand(cmds, fmt.Sprintf("UID FETCH %d:*", next)) || hasCommand(cmds, "UID FETCH 1:*") || hasCommand(cmds, "UID SEARCH") {
			t.Errorf("new mail should cost one UID FETCH %d:*: %q", next, cmds)
		}

		expungeUpstream(t, up.addr, up.user, up.pass, stored[1].UID)
		c = e.session("")
		got = c.uidls()
		c.quit()
		want := append([]string{first[0]}, first[2:]...)
		if len(got) != 6 || strings.Join(got[:4], " ") != strings.Join(want, " ") {
			t.Errorf("after an expunge elsewhere: %v, want %v and two new", got, want)
		}
		cmds = tr.commands()
		if !hasCommand(cmds, "UID SEARCH") || hasCommand(cmds, "UID FETCH 1:*") {
			t.Errorf("an expunge should cost a UID SEARCH and no re-listing: %q", cmds)
		}
	})
}

// TestUIDVALIDITYChangeDovecot: Dovecot renumbers a mailbox (a new
// UIDVALIDITY with the same UIDs, then new UIDs from 1 as after a server
// migration); every message keeps its UIDL.
func TestUIDVALIDITYChangeDovecot(t *testing.T) {
	addr, conf, root := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR"), os.Getenv("POPBRIDGE_TEST_DOVECOT_CONF"), os.Getenv("POPBRIDGE_TEST_DOVECOT_ROOT")
	domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
	if addr == "" || conf == "" || root == "" || domain == "" {
		t.Skip("no Dovecot with doveadm: see .ci/dovecot-start")
	}
	user := freshUser(domain)
	up := &upstreamEnv{name: "dovecot", addr: addr, user: user, pass: "pass", box: imaptest.NewAdmin(t, addr, user, "pass")}
	seed(up, 4)
	e := newEnv(t, up)
	c := e.session("")
	before := c.uidls()
	c.quit()

	doveadm := func(args ...string) {
		t.Helper()
		out, err := exec.Command("doveadm", append([]string{"-c", conf}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("doveadm %v: %v\n%s", args, err, out)
		}
	}
	check := func(what string) {
		t.Helper()
		c := e.session("")
		defer c.quit()
		if got := c.uidls(); strings.Join(got, " ") != strings.Join(before, " ") {
			t.Errorf("after %s: UIDLs %v, want %v", what, got, before)
		}
	}
	oldUV := up.box.UIDValidity("INBOX")
	doveadm("mailbox", "update", "-u", user, "--uid-validity", fmt.Sprint(oldUV+1000), "INBOX")
	check("a new UIDVALIDITY")

	doveadm("kick", user)
	maildir := filepath.Join(root, "home", user, "Maildir")
	files, _ := filepath.Glob(filepath.Join(maildir, "dovecot.index*"))
	for _, f := range append(files, filepath.Join(maildir, "dovecot-uidlist")) {
		os.Remove(f)
	}
	check("a renumbering")
	// doveadm kick closed the admin connection too.
	if uv := imaptest.NewAdmin(t, addr, user, "pass").UIDValidity("INBOX"); uv == oldUV || uv == oldUV+1000 {
		t.Errorf("the renumbering kept UIDVALIDITY %d", uv)
	}
}
