// Package imaptest provides IMAP upstreams for popbridge's tests: an
// in-process go-imap memory server with fault injection and a command
// recorder (MemServer), a hook for a real Dovecot (Dovecot), and a helper
// connection that sets up and inspects mailboxes on any IMAP server (Admin),
// so that the same assertions run against both (Upstream, Factories).
package imaptest

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// Message is a message as the upstream holds it.
type Message struct {
	UID   uint32
	Flags []imap.Flag
	Date  time.Time // INTERNALDATE
	Size  int64     // RFC822.SIZE
	Raw   []byte    // BODY[]
}

// HasFlag reports whether m has flag f (flags compare case-insensitively).
func (m Message) HasFlag(f imap.Flag) bool {
	for _, g := range m.Flags {
		if strings.EqualFold(string(g), string(f)) {
			return true
		}
	}
	return false
}

// Mailboxes sets up and inspects the mailboxes of a test account. Its
// methods fail the test on error.
type Mailboxes interface {
	// Append adds raw to mailbox and returns its UID.
	Append(mailbox string, raw []byte, flags ...imap.Flag) uint32
	// AppendAt is Append with an INTERNALDATE.
	AppendAt(mailbox string, raw []byte, date time.Time, flags ...imap.Flag) uint32
	// AppendMany adds messages to mailbox (pipelined on a real server)
	// and returns their UIDs.
	AppendMany(mailbox string, raws [][]byte) []uint32
	// Messages returns every message of mailbox, ascending by UID.
	Messages(mailbox string) []Message
	// UIDValidity returns the UIDVALIDITY of mailbox.
	UIDValidity(mailbox string) uint32
	// AddFlags adds flags to message uid of mailbox.
	AddFlags(mailbox string, uid uint32, flags ...imap.Flag)
	// Create creates mailbox, with special-use attributes.
	Create(mailbox string, specialUse ...imap.MailboxAttr)
	// Delete deletes mailbox; a missing mailbox is not an error.
	Delete(mailbox string)
	// Recreate deletes and creates mailbox again: it is empty and has a
	// new UIDVALIDITY.
	Recreate(mailbox string)
	// Reset removes every message of mailbox (UIDVALIDITY stays).
	Reset(mailbox string)
}

// Admin is a helper IMAP connection for test setup and assertions, on any
// IMAP server. Its methods fail the test on error. It is safe for
// concurrent use, one command at a time.
type Admin struct {
	t      testing.TB
	mu     sync.Mutex
	client *imapclient.Client
	caps   imap.CapSet
	user   string
}

var _ Mailboxes = (*Admin)(nil)

// NewAdmin dials addr in cleartext and logs in; the connection is closed
// when the test ends.
func NewAdmin(t testing.TB, addr, user, pass string) *Admin {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("imaptest: dial %s: %v", addr, err)
	}
	return newAdmin(t, conn, user, pass)
}

func newAdmin(t testing.TB, conn net.Conn, user, pass string) *Admin {
	t.Helper()
	c := imapclient.New(conn, nil)
	if err := c.WaitGreeting(); err != nil {
		c.Close()
		t.Fatalf("imaptest: greeting: %v", err)
	}
	if c.State() == imap.ConnStateNotAuthenticated {
		if err := c.Login(user, pass).Wait(); err != nil {
			c.Close()
			t.Fatalf("imaptest: login as %s: %v", user, err)
		}
	}
	caps, err := c.Capability().Wait()
	if err != nil {
		c.Close()
		t.Fatalf("imaptest: capability: %v", err)
	}
	a := &Admin{t: t, client: c, caps: caps, user: user}
	t.Cleanup(a.Close)
	return a
}

// Close logs out.
func (a *Admin) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.client.Closed():
		return
	default:
	}
	done := make(chan struct{})
	go func() { a.client.Logout().Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	a.client.Close()
}

// Caps returns the server's capabilities after login.
func (a *Admin) Caps() imap.CapSet { return a.caps }

func (a *Admin) fatalf(format string, args ...any) {
	a.t.Helper()
	a.t.Fatalf("imaptest: "+format, args...)
}

// Append implements Mailboxes.
func (a *Admin) Append(mailbox string, raw []byte, flags ...imap.Flag) uint32 {
	a.t.Helper()
	return a.AppendAt(mailbox, raw, time.Time{}, flags...)
}

// AppendAt implements Mailboxes. Without APPENDUID (UIDPLUS), the UID is
// taken from UIDNEXT before the APPEND, which is right as long as nothing
// else appends at the same time.
func (a *Admin) AppendAt(mailbox string, raw []byte, date time.Time, flags ...imap.Flag) uint32 {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var next uint32
	if !a.caps.Has(imap.CapUIDPlus) {
		st, err := a.client.Status(mailbox, &imap.StatusOptions{UIDNext: true}).Wait()
		if err != nil {
			a.fatalf("STATUS %s: %v", mailbox, err)
		}
		next = uint32(st.UIDNext)
	}
	cmd := a.client.Append(mailbox, int64(len(raw)), &imap.AppendOptions{Flags: flags, Time: date})
	if _, err := cmd.Write(raw); err != nil {
		a.fatalf("APPEND %s: %v", mailbox, err)
	}
	if err := cmd.Close(); err != nil {
		a.fatalf("APPEND %s: %v", mailbox, err)
	}
	data, err := cmd.Wait()
	if err != nil {
		a.fatalf("APPEND %s: %v", mailbox, err)
	}
	if data.UID != 0 {
		return uint32(data.UID)
	}
	if next == 0 {
		a.fatalf("APPEND %s: no APPENDUID", mailbox)
	}
	return next
}

// AppendMany implements Mailboxes. It pipelines up to 64 APPENDs and needs
// APPENDUID (UIDPLUS).
func (a *Admin) AppendMany(mailbox string, raws [][]byte) []uint32 {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.caps.Has(imap.CapUIDPlus) {
		a.t.Skipf("imaptest: AppendMany needs UIDPLUS")
	}
	uids := make([]uint32, 0, len(raws))
	for len(raws) > 0 {
		batch := raws[:min(64, len(raws))]
		raws = raws[len(batch):]
		cmds := make([]*imapclient.AppendCommand, len(batch))
		for i, raw := range batch {
			cmd := a.client.Append(mailbox, int64(len(raw)), nil)
			if _, err := cmd.Write(raw); err != nil {
				a.fatalf("APPEND %s: %v", mailbox, err)
			}
			if err := cmd.Close(); err != nil {
				a.fatalf("APPEND %s: %v", mailbox, err)
			}
			cmds[i] = cmd
		}
		for _, cmd := range cmds {
			data, err := cmd.Wait()
			if err != nil {
				a.fatalf("APPEND %s: %v", mailbox, err)
			}
			uids = append(uids, uint32(data.UID))
		}
	}
	return uids
}

// selectBox selects mailbox (read-only with readOnly) and returns its size.
func (a *Admin) selectBox(mailbox string, readOnly bool) *imap.SelectData {
	a.t.Helper()
	sd, err := a.client.Select(mailbox, &imap.SelectOptions{ReadOnly: readOnly}).Wait()
	if err != nil {
		a.fatalf("SELECT %s: %v", mailbox, err)
	}
	return sd
}

// unselect leaves the selected mailbox without expunging.
func (a *Admin) unselect() {
	a.t.Helper()
	if err := a.client.Unselect().Wait(); err != nil {
		a.fatalf("UNSELECT: %v", err)
	}
}

// Messages implements Mailboxes. It buffers every message: use it on test
// mailboxes only.
func (a *Admin) Messages(mailbox string) []Message {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	sd := a.selectBox(mailbox, true)
	defer a.unselect()
	if sd.NumMessages == 0 {
		return nil
	}
	body := &imap.FetchItemBodySection{Peek: true}
	cmd := a.client.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID: true, Flags: true, InternalDate: true, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{body},
	})
	var out []Message
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		buf, err := msg.Collect()
		if err != nil {
			cmd.Close()
			a.fatalf("FETCH %s: %v", mailbox, err)
		}
		out = append(out, Message{
			UID:   uint32(buf.UID),
			Flags: buf.Flags,
			Date:  buf.InternalDate,
			Size:  buf.RFC822Size,
			Raw:   buf.FindBodySection(body),
		})
	}
	if err := cmd.Close(); err != nil {
		a.fatalf("FETCH %s: %v", mailbox, err)
	}
	for i := 1; i < len(out); i++ {
		if out[i].UID < out[i-1].UID {
			a.fatalf("FETCH %s: UIDs out of order", mailbox)
		}
	}
	return out
}

// UIDValidity implements Mailboxes.
func (a *Admin) UIDValidity(mailbox string) uint32 {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := a.client.Status(mailbox, &imap.StatusOptions{UIDValidity: true}).Wait()
	if err != nil {
		a.fatalf("STATUS %s: %v", mailbox, err)
	}
	return st.UIDValidity
}

// AddFlags implements Mailboxes.
func (a *Admin) AddFlags(mailbox string, uid uint32, flags ...imap.Flag) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.selectBox(mailbox, false)
	defer a.unselect()
	err := a.client.Store(imap.UIDSetNum(imap.UID(uid)), &imap.StoreFlags{
		Op: imap.StoreFlagsAdd, Silent: true, Flags: flags,
	}, nil).Close()
	if err != nil {
		a.fatalf("UID STORE %d: %v", uid, err)
	}
}

// Create implements Mailboxes. Special-use attributes need
// CREATE-SPECIAL-USE; without it the test is skipped.
func (a *Admin) Create(mailbox string, specialUse ...imap.MailboxAttr) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var opts *imap.CreateOptions
	if len(specialUse) > 0 {
		if !a.caps.Has(imap.CapCreateSpecialUse) {
			a.t.Skipf("imaptest: server lacks CREATE-SPECIAL-USE")
		}
		opts = &imap.CreateOptions{SpecialUse: specialUse}
	}
	if err := a.client.Create(mailbox, opts).Wait(); err != nil {
		a.fatalf("CREATE %s: %v", mailbox, err)
	}
}

// Delete implements Mailboxes.
func (a *Admin) Delete(mailbox string) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.delete(mailbox)
}

func (a *Admin) delete(mailbox string) {
	a.t.Helper()
	err := a.client.Delete(mailbox).Wait()
	var ie *imap.Error
	if err != nil && !(errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo) {
		a.fatalf("DELETE %s: %v", mailbox, err)
	}
}

// Recreate implements Mailboxes.
func (a *Admin) Recreate(mailbox string) {
	a.t.Helper()
	a.Delete(mailbox)
	a.Create(mailbox)
}

// Reset implements Mailboxes with UID STORE 1:* +FLAGS.SILENT (\Deleted)
// and UID EXPUNGE 1:* (never a bare EXPUNGE: MemServer fails a test that
// sends one).
func (a *Admin) Reset(mailbox string) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	sd := a.selectBox(mailbox, false)
	defer a.unselect()
	if sd.NumMessages == 0 {
		return
	}
	all := imap.UIDSet{{Start: 1, Stop: 0}}
	err := a.client.Store(all, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close()
	if err != nil {
		a.fatalf("UID STORE: %v", err)
	}
	if err := a.client.UIDExpunge(all).Close(); err != nil {
		a.fatalf("UID EXPUNGE: %v", err)
	}
}

// SetACL sets the rights of identifier on mailbox (RFC 4314 SETACL; rights
// replace those identifier had). The server must have ACL.
func (a *Admin) SetACL(mailbox, identifier, rights string) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.caps.Has(imap.CapACL) {
		a.t.Skipf("imaptest: server lacks ACL")
	}
	err := a.client.SetACL(mailbox, imap.RightsIdentifier(identifier), imap.RightModificationReplace, imap.RightSet(rights)).Wait()
	if err != nil {
		a.fatalf("SETACL %s %s %s: %v", mailbox, identifier, rights, err)
	}
}

// SetQuota makes mailbox a quota root of at most storage KiB (RFC 9208
// SETQUOTA root (STORAGE n)). The server must have QUOTA.
func (a *Admin) SetQuota(root string, storage int64) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.caps.Has(imap.CapQuota) {
		a.t.Skipf("imaptest: server lacks QUOTA")
	}
	err := a.client.SetQuota(root, map[imap.QuotaResourceType]int64{imap.QuotaResourceStorage: storage}).Wait()
	if err != nil {
		a.fatalf("SETQUOTA %s: %v", root, err)
	}
}
