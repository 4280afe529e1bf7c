package imaptest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// Environment of a real Cyrus IMAP for the tests (set by .ci/cyrus-start).
// The address speaks cleartext IMAP; any password logs in; the
// administrator creates users and sets rights and quotas.
const (
	EnvCyrusAddr      = "POPBRIDGE_TEST_CYRUS_ADDR"
	EnvCyrusAdmin     = "POPBRIDGE_TEST_CYRUS_ADMIN"
	EnvCyrusAdminPass = "POPBRIDGE_TEST_CYRUS_ADMIN_PASS"
)

// CyrusAccount is a fresh user on the test Cyrus: INBOX and a \Trash
// mailbox named Trash, both the user's.
type CyrusAccount struct {
	Addr       string
	User, Pass string
	// Admin is a connection as the administrator, User a connection as
	// the user (to set up and inspect mail).
	Admin, Box *Admin
	// Inbox and Trash are the administrator's names of the user's
	// mailboxes (for SetACL and SetQuota).
	Inbox, Trash string
}

// NewCyrusAccount creates a user on the Cyrus named by
// POPBRIDGE_TEST_CYRUS_ADDR, or skips the test when it is not set.
func NewCyrusAccount(t testing.TB) *CyrusAccount {
	t.Helper()
	addr := os.Getenv(EnvCyrusAddr)
	if addr == "" {
		t.Skipf("imaptest: %s not set: no Cyrus to test against (see .ci/cyrus-start)", EnvCyrusAddr)
	}
	admin := NewAdmin(t, addr, os.Getenv(EnvCyrusAdmin), os.Getenv(EnvCyrusAdminPass))
	var b [6]byte
	_, _ = rand.Read(b[:])
	user := "t-" + hex.EncodeToString(b[:])
	acc := &CyrusAccount{Addr: addr, User: user, Pass: "pass", Admin: admin, Inbox: "user/" + user, Trash: "user/" + user + "/Trash"}
	admin.Create(acc.Inbox)
	admin.Create(acc.Trash, imap.MailboxAttrTrash)
	t.Cleanup(func() {
		// The administrator needs the right to delete.
		admin.SetACL(acc.Trash, admin.user, "lrswipkxtea")
		admin.SetACL(acc.Inbox, admin.user, "lrswipkxtea")
		admin.Delete(acc.Trash)
		admin.Delete(acc.Inbox)
	})
	acc.Box = NewAdmin(t, addr, user, acc.Pass)
	return acc
}
