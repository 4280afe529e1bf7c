package imaptest_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// recordingTB records Errorf instead of failing.
type recordingTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordingTB) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

func client(t *testing.T, s *imaptest.MemServer) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(s.User, s.Pass).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBareExpungeAndCloseFailTheTest(t *testing.T) {
	rt := &recordingTB{TB: t}
	s := imaptest.NewMemServer(rt)
	s.Append("INBOX", []byte("Subject: x\r\n\r\nx\r\n"), imap.FlagDeleted)
	c := client(t, s)

	if err := c.Expunge().Close(); err == nil {
		t.Error("bare EXPUNGE answered OK")
	}
	if err := c.UnselectAndExpunge().Wait(); err == nil {
		t.Error("CLOSE answered OK")
	}
	errs := rt.errors()
	if len(errs) != 2 || !strings.Contains(errs[0], "bare EXPUNGE") || !strings.Contains(errs[1], "CLOSE") {
		t.Errorf("test failures %q, want one for EXPUNGE and one for CLOSE", errs)
	}
	if n := len(s.Messages("INBOX")); n != 1 {
		t.Errorf("%d messages left, want 1", n)
	}
}

func TestRecorder(t *testing.T) {
	s := imaptest.NewMemServer(t)
	for range 5 {
		s.Append("INBOX", []byte("Subject: x\r\n\r\nx\r\n"))
	}
	c := client(t, s)
	body := "Subject: appended\r\n\r\n" + strings.Repeat("y", 5000) + "\r\n"
	app := c.Append("INBOX", int64(len(body)), nil)
	app.Write([]byte(body))
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.UIDSetNum(1, 2, 3, 5), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	s.Messages("INBOX") // the helper is not recorded

	var names []string
	for _, cmd := range s.Commands() {
		names = append(names, cmd.Name)
	}
	got := strings.Join(names, " ")
	if !strings.HasPrefix(got, "LOGIN ") || !strings.HasSuffix(got, "SELECT APPEND UID STORE") {
		t.Errorf("recorded %q", got)
	}
	stores := s.CommandsNamed("UID STORE")
	if len(stores) != 1 || stores[0].Set() != "1:3,5" || stores[0].Size != len(stores[0].Line)+2 {
		t.Errorf("UID STORE recorded as %+v", stores)
	}
	if apps := s.CommandsNamed("APPEND"); len(apps) != 1 || apps[0].Size > 100 {
		t.Errorf("APPEND recorded as %+v (literal data must not count)", apps)
	}
	s.ResetCommands()
	if n := len(s.Commands()); n != 0 {
		t.Errorf("%d commands after ResetCommands", n)
	}
}

func TestFailAndBlock(t *testing.T) {
	s := imaptest.NewMemServer(t)
	s.Append("INBOX", []byte("Subject: x\r\n\r\nx\r\n"))
	c := client(t, s)

	s.Fail("STORE", imaptest.ErrUnavailable)
	err := c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Code != imap.ResponseCodeUnavailable {
		t.Errorf("STORE with a fault = %v", err)
	}
	s.AddFlags("INBOX", 1, imap.FlagFlagged) // the helper is not faulted
	s.Fail("STORE", nil)
	if err := c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Errorf("STORE after clearing the fault: %v", err)
	}

	release := s.Block("FETCH")
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(imap.UIDSetNum(1), &imap.FetchOptions{UID: true}).Collect()
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("blocked FETCH returned %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	if err := <-done; err != nil {
		t.Errorf("FETCH after release: %v", err)
	}
}

func TestMailboxes(t *testing.T) {
	s := imaptest.NewMemServer(t)
	s.Create("Trash", imap.MailboxAttrTrash)
	date := time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)
	raw := []byte("Subject: x\r\n\r\nbare\nLF\n")
	uid := s.AppendAt("Trash", raw, date, imap.FlagSeen)
	msgs := s.Messages("Trash")
	if len(msgs) != 1 || msgs[0].UID != uid || !bytes.Equal(msgs[0].Raw, raw) ||
		!msgs[0].Date.Equal(date) || !msgs[0].HasFlag(imap.FlagSeen) || msgs[0].Size != int64(len(raw)) {
		t.Errorf("Messages = %+v", msgs)
	}

	c := client(t, s)
	list, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string][]imap.MailboxAttr{}
	for _, d := range list {
		attrs[d.Mailbox] = d.Attrs
	}
	if len(attrs) != 2 || len(attrs["Trash"]) != 1 || attrs["Trash"][0] != imap.MailboxAttrTrash {
		t.Errorf("LIST = %v", attrs)
	}

	v := s.UIDValidity("Trash")
	s.Recreate("Trash")
	if s.UIDValidity("Trash") == v {
		t.Error("Recreate kept the UIDVALIDITY")
	}
	if n := len(s.Messages("Trash")); n != 0 {
		t.Errorf("%d messages after Recreate", n)
	}

	s.AppendMany("INBOX", [][]byte{raw, raw, raw})
	s.Reset("INBOX")
	if n := len(s.Messages("INBOX")); n != 0 {
		t.Errorf("%d messages after Reset", n)
	}
}

// TestUpstreams runs the Mailboxes helpers against every upstream.
func TestUpstreams(t *testing.T) {
	for _, f := range imaptest.Factories() {
		t.Run(f.Name, func(t *testing.T) {
			u := f.New(t)
			raw := []byte("Subject: hello\r\n\r\nworld\r\n")
			uids := u.AppendMany(u.Mailbox, [][]byte{raw, raw})
			uid := u.Append(u.Mailbox, raw)
			u.AddFlags(u.Mailbox, uid, imap.FlagDeleted)
			msgs := u.Messages(u.Mailbox)
			if len(msgs) != 3 || msgs[0].UID != uids[0] || msgs[1].UID != uids[1] || msgs[2].UID != uid ||
				!msgs[2].HasFlag(imap.FlagDeleted) || !bytes.Equal(msgs[0].Raw, raw) {
				t.Errorf("Messages = %+v", msgs)
			}
			other := u.NewMailbox("other")
			if n := len(u.Messages(other)); n != 0 {
				t.Errorf("new mailbox holds %d messages", n)
			}
			u.Reset(u.Mailbox)
			if n := len(u.Messages(u.Mailbox)); n != 0 {
				t.Errorf("%d messages after Reset", n)
			}
		})
	}
}
