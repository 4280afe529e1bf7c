package imaptest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// Environment of a real Dovecot for the tests (set by the CI script that
// starts it). The address is host:port and speaks cleartext IMAP.
const (
	EnvDovecotAddr = "POPBRIDGE_TEST_DOVECOT_ADDR"
	EnvDovecotUser = "POPBRIDGE_TEST_DOVECOT_USER"
	EnvDovecotPass = "POPBRIDGE_TEST_DOVECOT_PASS"
)

// Dovecot returns the address and credentials of the real Dovecot named by
// POPBRIDGE_TEST_DOVECOT_ADDR, _USER and _PASS, and skips the test when
// the address is not set.
func Dovecot(t testing.TB) (addr, user, pass string) {
	t.Helper()
	addr = os.Getenv(EnvDovecotAddr)
	if addr == "" {
		t.Skipf("imaptest: %s not set: no Dovecot to test against", EnvDovecotAddr)
	}
	return addr, os.Getenv(EnvDovecotUser), os.Getenv(EnvDovecotPass)
}

// Upstream is an IMAP account for one test, with a mailbox of its own.
// Its embedded Mailboxes sets up and inspects the account.
type Upstream struct {
	Name       string // "mem" or "dovecot"
	Addr       string // host:port, cleartext IMAP
	User, Pass string
	// Mailbox is this test's mailbox: INBOX of a fresh MemServer, or a
	// new mailbox on a shared server (deleted when the test ends).
	Mailbox string
	// Mem is the MemServer, nil on a real server.
	Mem *MemServer
	Mailboxes

	t      testing.TB
	prefix string // of this test's mailboxes on a shared server
}

// NewMailbox creates another mailbox for this test and returns its name:
// base on a MemServer, a unique name on a shared server (deleted when the
// test ends). With special-use attributes, a real server needs
// CREATE-SPECIAL-USE or the test is skipped.
func (u *Upstream) NewMailbox(base string, specialUse ...imap.MailboxAttr) string {
	u.t.Helper()
	name := base
	if u.Mem == nil {
		name = u.prefix + "-" + base
		u.t.Cleanup(func() { u.Delete(name) })
	}
	u.Create(name, specialUse...)
	return name
}

// Factory makes an Upstream for a test.
type Factory struct {
	Name string
	// New returns the test's Upstream; opts apply to a MemServer only. It
	// skips the test when the upstream is not available.
	New func(t testing.TB, opts ...Option) *Upstream
}

// Factories returns the upstreams a test should run against: a MemServer,
// and the real Dovecot (skipped unless POPBRIDGE_TEST_DOVECOT_ADDR is set).
//
//	for _, f := range imaptest.Factories() {
//		t.Run(f.Name, func(t *testing.T) { u := f.New(t); ... })
//	}
func Factories() []Factory {
	return []Factory{
		{Name: "mem", New: Mem},
		{Name: "dovecot", New: DovecotUpstream},
	}
}

// Mem returns an Upstream on a new MemServer.
func Mem(t testing.TB, opts ...Option) *Upstream {
	t.Helper()
	s := NewMemServer(t, opts...)
	return &Upstream{
		Name: "mem", Addr: s.Addr, User: s.User, Pass: s.Pass,
		Mailbox: "INBOX", Mem: s, Mailboxes: s, t: t,
	}
}

// DovecotUpstream returns an Upstream on the real Dovecot, with a new
// mailbox for the test, or skips the test. opts are ignored.
func DovecotUpstream(t testing.TB, _ ...Option) *Upstream {
	t.Helper()
	addr, user, pass := Dovecot(t)
	a := NewAdmin(t, addr, user, pass)
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "popbridge-test-" + hex.EncodeToString(b[:])
	u := &Upstream{
		Name: "dovecot", Addr: addr, User: user, Pass: pass,
		Mailbox: prefix, Mailboxes: a, t: t, prefix: prefix,
	}
	a.Create(prefix)
	t.Cleanup(func() { a.Delete(prefix) })
	return u
}
