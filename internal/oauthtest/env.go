package oauthtest

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// The identities of an Env.
const (
	// User signs in and consents; OtherUser too, but has no access to
	// SharedMailbox, which User has FullAccess to.
	User          = "alice@example.com"
	OtherUser     = "bob@example.com"
	SharedMailbox = "shared@example.com"

	// PublicClientID is a public client (no secret: device flow, auth
	// code + PKCE), as a Microsoft "mobile and desktop" registration.
	PublicClientID = "popbridge-public"
	// ConfidentialClientID needs ConfidentialSecret, as a Google
	// "Desktop app" client.
	ConfidentialClientID = "popbridge-desktop"
	ConfidentialSecret   = "desktop-client-secret"
	// AppClientID is an app with RoleIMAPAccessAsApp for User's mailbox
	// and SharedMailbox (client credentials with AppSecret).
	AppClientID = "popbridge-app"
	AppSecret   = "app-client-secret"

	// IMAPScope is the delegated scope of an Env's tokens, and AppScope
	// the client-credentials scope.
	IMAPScope = "https://outlook.office.com/IMAP.AccessAsUser.All"
	AppScope  = "https://outlook.office365.com/.default"
)

// Env is a Provider and an IMAPServer that trusts it, with the identities
// above registered.
type Env struct {
	Provider *Provider
	IMAP     *IMAPServer
}

// NewEnv returns an Env (not started) with the clients, users and the
// shared mailbox registered, each mailbox with an empty INBOX.
func NewEnv(opts Options) *Env {
	p := NewProvider(opts)
	p.AddUser(User)
	p.AddUser(OtherUser)
	p.AddSharedMailbox(SharedMailbox, User)
	p.AddClient(Client{ID: PublicClientID})
	p.AddClient(Client{ID: ConfidentialClientID, Secret: ConfidentialSecret})
	p.AddClient(Client{ID: AppClientID, Secret: AppSecret, Roles: []string{RoleIMAPAccessAsApp}, Mailboxes: []string{User, SharedMailbox}})
	e := &Env{Provider: p, IMAP: NewIMAPServer(p, IMAPOptions{})}
	for _, m := range p.Mailboxes() {
		e.IMAP.Account(m)
	}
	return e
}

// Start starts the provider on providerAddr and the IMAP server on
// imapAddr ("127.0.0.1:0" picks a port).
func (e *Env) Start(providerAddr, imapAddr string) error {
	if err := e.Provider.Start(providerAddr); err != nil {
		return err
	}
	if err := e.IMAP.Start(imapAddr); err != nil {
		e.Provider.Close()
		return err
	}
	return nil
}

// Close stops both servers.
func (e *Env) Close() {
	e.IMAP.Close()
	e.Provider.Close()
}

// Start starts an Env on loopback ports for a test and stops it when the
// test ends.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	e := NewEnv(opts)
	if err := e.Start("127.0.0.1:0", "127.0.0.1:0"); err != nil {
		t.Fatalf("oauthtest: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// Seed appends n sample messages to the INBOX of address and returns
// them.
func (e *Env) Seed(address string, n int) ([][]byte, error) {
	msgs := SampleMessages(address, n)
	for _, m := range msgs {
		if _, err := e.IMAP.Append(address, "INBOX", m); err != nil {
			return nil, err
		}
	}
	return msgs, nil
}

// SampleMessages returns n small RFC 5322 messages to address.
func SampleMessages(address string, n int) [][]byte {
	out := make([][]byte, n)
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range out {
		out[i] = fmt.Appendf(nil, "From: sender%d@example.net\r\n"+
			"To: %s\r\n"+
			"Subject: Sample message %d\r\n"+
			"Date: %s\r\n"+
			"Message-ID: <sample-%d@oauthtest.invalid>\r\n"+
			"\r\n"+
			"This is sample message %d for %s.\r\n",
			i+1, address, i+1, date.Add(time.Duration(i)*time.Minute).Format(time.RFC1123Z), i+1, i+1, address)
	}
	return out
}

// Clock is a settable clock for Options.Now and the keeper's.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
