package oauthtest

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// IMAPOptions configure an IMAPServer.
type IMAPOptions struct {
	// Caps are the capabilities offered (default IMAP4rev1 and
	// IMAP4rev2, as imaptest.DefaultCaps).
	Caps []imap.Cap
	// Logger receives the server's errors (default: discarded).
	Logger imapserver.Logger
}

// AuthAttempt is one login attempt on an IMAPServer.
type AuthAttempt struct {
	Mechanism string // LOGIN, PLAIN, XOAUTH2, OAUTHBEARER
	User      string // the mailbox asked for ("" when unknown)
	OK        bool
}

// IMAPServer is an OAuth-only IMAP server: go-imap's memory server with a
// store per mailbox address, LOGIN and AUTHENTICATE PLAIN refused with
// NO [AUTHENTICATIONFAILED], and AUTHENTICATE XOAUTH2 and OAUTHBEARER
// checked with a TokenValidator (a Provider): the token must be valid and
// allowed to open the mailbox named by user= (XOAUTH2) or the GS2
// authorization identity (OAUTHBEARER). That covers a user's own mailbox,
// a shared mailbox delegated to the user, and an app's mailboxes.
type IMAPServer struct {
	check imaptest.BearerCheck
	srv   *imapserver.Server

	mu       sync.Mutex
	ln       net.Listener
	boxes    map[string]*imapmemserver.User // lower-case address
	attempts []AuthAttempt
}

// NewIMAPServer returns a server whose tokens v checks. Start it with
// Start.
func NewIMAPServer(v imaptest.TokenValidator, opts IMAPOptions) *IMAPServer {
	s := &IMAPServer{check: imaptest.MailboxCheck(v), boxes: make(map[string]*imapmemserver.User)}
	caps := make(imap.CapSet)
	if opts.Caps == nil {
		opts.Caps = imaptest.DefaultCaps
	}
	for _, c := range opts.Caps {
		caps[c] = struct{}{}
	}
	logger := opts.Logger
	if logger == nil {
		logger = discard{}
	}
	s.srv = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &imapSession{s: s}, nil, nil
		},
		Caps:         caps,
		InsecureAuth: true, // loopback, cleartext: tests and walk-throughs only
		Logger:       logger,
	})
	return s
}

type discard struct{}

func (discard) Printf(string, ...any) {}

// Start listens on addr (such as "127.0.0.1:0") and serves until Close.
func (s *IMAPServer) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	go s.srv.Serve(ln)
	return nil
}

// Addr is the address the server listens on.
func (s *IMAPServer) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Close stops the server and closes its connections.
func (s *IMAPServer) Close() error { return s.srv.Close() }

// Account returns the store of mailbox address, creating it with an
// empty INBOX on first use. Use it to inspect or change mail in-process
// (Status, Create ...).
func (s *IMAPServer) Account(address string) *imapmemserver.User {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(address)
	u := s.boxes[key]
	if u == nil {
		u = imapmemserver.NewUser(address, "")
		_ = u.Create("INBOX", nil)
		s.boxes[key] = u
	}
	return u
}

// Append adds raw to folder of mailbox address (byte for byte) and
// returns its UID.
func (s *IMAPServer) Append(address, folder string, raw []byte, flags ...imap.Flag) (uint32, error) {
	data, err := s.Account(address).Append(folder, bytes.NewReader(raw), &imap.AppendOptions{Flags: flags, Time: time.Now()})
	if err != nil {
		return 0, fmt.Errorf("oauthtest: append to %s of %s: %w", folder, address, err)
	}
	return uint32(data.UID), nil
}

// NumMessages returns the number of messages in folder of address.
func (s *IMAPServer) NumMessages(address, folder string) (uint32, error) {
	st, err := s.Account(address).Status(folder, &imap.StatusOptions{NumMessages: true})
	if err != nil {
		return 0, err
	}
	return *st.NumMessages, nil
}

// Attempts returns the login attempts so far, in order.
func (s *IMAPServer) Attempts() []AuthAttempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.attempts)
}

func (s *IMAPServer) record(a AuthAttempt) {
	s.mu.Lock()
	s.attempts = append(s.attempts, a)
	s.mu.Unlock()
}

// imapSession is a session of an IMAPServer: a memory-server session of
// the mailbox the client authenticated for.
type imapSession struct {
	*imapmemserver.UserSession // nil until authenticated
	s                          *IMAPServer
}

var (
	_ imapserver.SessionIMAP4rev2 = (*imapSession)(nil)
	_ imapserver.SessionSASL      = (*imapSession)(nil)
)

func (sess *imapSession) Login(username, _ string) error {
	sess.s.record(AuthAttempt{Mechanism: "LOGIN", User: username})
	return imaptest.ErrPasswordRefused
}

func (sess *imapSession) AuthenticateMechanisms() []string { return imaptest.OAuthMechanisms }

func (sess *imapSession) Authenticate(mech string) (sasl.Server, error) {
	mech = strings.ToUpper(mech)
	if mech == sasl.Plain {
		sess.s.record(AuthAttempt{Mechanism: mech})
	}
	return imaptest.OAuthMechanism(mech, func(user, token string) error {
		err := sess.s.check(user, token)
		sess.s.record(AuthAttempt{Mechanism: mech, User: user, OK: err == nil})
		if err != nil {
			return err
		}
		sess.UserSession = imapmemserver.NewUserSession(sess.s.Account(user))
		return nil
	})
}
