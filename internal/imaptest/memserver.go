package imaptest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// Injected errors for MemServer.Fail.
var (
	// ErrUnavailable is NO [UNAVAILABLE]: a temporary failure.
	ErrUnavailable = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "imaptest: injected UNAVAILABLE"}
	// ErrServerBug is NO [SERVERBUG].
	ErrServerBug = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeServerBug, Text: "imaptest: injected SERVERBUG"}
	// ErrNo is a NO without a response code.
	ErrNo = &imap.Error{Type: imap.StatusResponseTypeNo, Text: "imaptest: injected NO"}
)

// DefaultCaps are the capabilities of a MemServer without WithCaps.
var DefaultCaps = []imap.Cap{imap.CapIMAP4rev1, imap.CapIMAP4rev2}

// Option configures a MemServer.
type Option func(*memConfig)

type memConfig struct {
	caps       []imap.Cap
	tls        bool
	user, pass string
	oauth      BearerCheck // WithOAuth
	tokens     BearerCheck // WithTokens
	mechs      []string    // WithTokens
	cert       *tls.Certificate
	provider   providerConfig
}

// WithCaps sets the capabilities the server offers (go-imap's
// imapserver.Options.Caps): for example WithCaps(imap.CapIMAP4rev1) for a
// server without UIDPLUS and MOVE. The server does not enforce them: assert
// what the client sent with Commands.
func WithCaps(caps ...imap.Cap) Option {
	return func(c *memConfig) { c.caps = caps }
}

// WithTLS gives the server a self-signed certificate for 127.0.0.1 and
// localhost: it offers STARTTLS on Addr and implicit TLS on TLSAddr, and
// ClientTLS trusts it. Commands on TLS connections are not recorded.
func WithTLS() Option {
	return func(c *memConfig) { c.tls = true }
}

// WithCredentials sets the account's user name and password (default
// "alice" and "s3cret pass").
func WithCredentials(user, pass string) Option {
	return func(c *memConfig) { c.user, c.pass = user, pass }
}

// MemServer is an in-process IMAP server (go-imap's imapmemserver) on
// 127.0.0.1 with one account whose INBOX exists. Its sessions fail the test
// on a bare EXPUNGE or a CLOSE, can be told to fail or hang on a command
// (Fail, Block), and record what clients send (Commands). Connections of
// its own helper (Messages, Reset ...) are neither recorded nor faulted.
type MemServer struct {
	Addr       string
	User, Pass string
	// With WithTLS: the implicit-TLS address and a client configuration
	// that trusts the server's certificate.
	TLSAddr   string
	ClientTLS *tls.Config

	t    testing.TB
	mem  *imapmemserver.Server
	user *imapmemserver.User
	srv  *imapserver.Server
	rec  recorder
	done chan struct{}

	mu            sync.Mutex
	finished      bool
	internal      map[string]bool
	specialUse    map[string][]imap.MailboxAttr // every mailbox, with its attributes
	faults        map[string]error
	blocks        map[string]chan struct{}
	admin         *Admin
	oauth         BearerCheck // nil: passwords; else OAuth-only (WithOAuth)
	tokens        BearerCheck // WithTokens: passwords and tokens
	mechs         []string    // the SASL mechanisms of WithTokens
	auths         []string    // AuthAttempts
	provider      providerConfig
	logins        int                         // client sessions logged in now (WithMaxLogins)
	refusedLogins int                         // LOGINs refused for WithMaxLogins
	newPass       string                      // SetPassword: the password of client logins, when set
	conns         map[*imapserver.Conn]string // client connections, with their address (ByeAll)
}

var _ Mailboxes = (*MemServer)(nil)

// NewMemServer starts a MemServer that stops when the test ends.
func NewMemServer(t testing.TB, opts ...Option) *MemServer {
	t.Helper()
	cfg := memConfig{caps: DefaultCaps, user: "alice", pass: "s3cret pass"}
	for _, o := range opts {
		o(&cfg)
	}
	s := &MemServer{
		User:       cfg.user,
		Pass:       cfg.pass,
		t:          t,
		mem:        imapmemserver.New(),
		user:       imapmemserver.NewUser(cfg.user, cfg.pass),
		done:       make(chan struct{}),
		internal:   make(map[string]bool),
		specialUse: make(map[string][]imap.MailboxAttr),
		faults:     make(map[string]error),
		blocks:     make(map[string]chan struct{}),
		oauth:      cfg.oauth,
		tokens:     cfg.tokens,
		mechs:      cfg.mechs,
		provider:   cfg.provider,
	}
	s.mem.AddUser(s.user)
	s.Create("INBOX")

	caps := make(imap.CapSet)
	for _, c := range cfg.caps {
		caps[c] = struct{}{}
	}
	options := &imapserver.Options{
		NewSession: func(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			sess := &session{s: s, addr: conn.NetConn().RemoteAddr().String()}
			s.mu.Lock()
			if s.conns == nil {
				s.conns = map[*imapserver.Conn]string{}
			}
			s.conns[conn] = sess.addr
			s.mu.Unlock()
			if s.oauth != nil {
				return &oauthSession{sess}, nil, nil
			}
			if s.tokens != nil {
				return &tokenSession{sess}, nil, nil
			}
			return sess, nil, nil
		},
		Caps:         caps,
		InsecureAuth: true,
		Logger:       serverLogger{s},
	}
	var serverTLS *tls.Config
	if cfg.cert != nil {
		serverTLS, s.ClientTLS = certConfigs(cfg.cert)
		options.TLSConfig = serverTLS
	} else if cfg.tls {
		serverTLS, s.ClientTLS = selfSigned(t)
		options.TLSConfig = serverTLS
	}
	s.srv = imapserver.New(options)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("imaptest: listen: %v", err)
	}
	s.Addr = ln.Addr().String()
	go s.srv.Serve(&recListener{Listener: ln, s: s})
	if cfg.tls {
		tln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("imaptest: listen: %v", err)
		}
		s.TLSAddr = tln.Addr().String()
		go s.srv.Serve(tls.NewListener(tln, serverTLS))
	}
	t.Cleanup(s.stop)
	return s
}

func (s *MemServer) stop() {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
	close(s.done)
	s.srv.Close()
}

// serverLogger logs into the test log while the test runs.
type serverLogger struct{ s *MemServer }

func (l serverLogger) Printf(format string, args ...any) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if !l.s.finished {
		l.s.t.Logf("imapserver: "+format, args...)
	}
}

// errorf fails the test from a server goroutine, while the test runs.
func (s *MemServer) errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.finished {
		s.t.Errorf(format, args...)
	}
}

func (s *MemServer) isInternal(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.internal[addr]
}

// Admin returns the MemServer's own helper connection (created on first
// use). Its commands are not recorded and not faulted.
func (s *MemServer) Admin() *Admin {
	s.t.Helper()
	s.mu.Lock()
	a := s.admin
	s.mu.Unlock()
	if a != nil {
		return a
	}
	conn, err := net.DialTimeout("tcp", s.Addr, 10*time.Second)
	if err != nil {
		s.t.Fatalf("imaptest: dial: %v", err)
	}
	s.mu.Lock()
	s.internal[conn.LocalAddr().String()] = true
	s.mu.Unlock()
	a = newAdmin(s.t, conn, s.User, s.Pass)
	s.mu.Lock()
	s.admin = a
	s.mu.Unlock()
	return a
}

// Append adds raw to mailbox in-process (byte for byte) and returns its UID.
func (s *MemServer) Append(mailbox string, raw []byte, flags ...imap.Flag) uint32 {
	s.t.Helper()
	return s.AppendAt(mailbox, raw, time.Time{}, flags...)
}

// AppendAt is Append with an INTERNALDATE (zero: now).
func (s *MemServer) AppendAt(mailbox string, raw []byte, date time.Time, flags ...imap.Flag) uint32 {
	s.t.Helper()
	data, err := s.user.Append(mailbox, bytes.NewReader(raw), &imap.AppendOptions{Flags: flags, Time: date})
	if err != nil {
		s.t.Fatalf("imaptest: append to %s: %v", mailbox, err)
	}
	return uint32(data.UID)
}

// AppendMany implements Mailboxes.
func (s *MemServer) AppendMany(mailbox string, raws [][]byte) []uint32 {
	s.t.Helper()
	uids := make([]uint32, len(raws))
	for i, raw := range raws {
		uids[i] = s.AppendAt(mailbox, raw, time.Time{})
	}
	return uids
}

// Messages returns the messages of mailbox with their flags and bytes,
// ascending by UID (through the helper connection).
func (s *MemServer) Messages(mailbox string) []Message {
	s.t.Helper()
	return s.Admin().Messages(mailbox)
}

// UIDValidity implements Mailboxes.
func (s *MemServer) UIDValidity(mailbox string) uint32 {
	s.t.Helper()
	st, err := s.user.Status(mailbox, &imap.StatusOptions{UIDValidity: true})
	if err != nil {
		s.t.Fatalf("imaptest: status %s: %v", mailbox, err)
	}
	return st.UIDValidity
}

// AddFlags implements Mailboxes (through the helper connection).
func (s *MemServer) AddFlags(mailbox string, uid uint32, flags ...imap.Flag) {
	s.t.Helper()
	s.Admin().AddFlags(mailbox, uid, flags...)
}

// Create creates mailbox with special-use attributes (LIST shows them,
// with or without RETURN (SPECIAL-USE), as Dovecot does).
func (s *MemServer) Create(mailbox string, specialUse ...imap.MailboxAttr) {
	s.t.Helper()
	if err := s.user.Create(mailbox, nil); err != nil {
		s.t.Fatalf("imaptest: create %s: %v", mailbox, err)
	}
	s.mu.Lock()
	s.specialUse[mailbox] = slices.Clone(specialUse)
	s.mu.Unlock()
}

// Delete implements Mailboxes.
func (s *MemServer) Delete(mailbox string) {
	s.t.Helper()
	_ = s.user.Delete(mailbox)
	s.mu.Lock()
	delete(s.specialUse, mailbox)
	s.mu.Unlock()
}

// Recreate deletes mailbox and creates it again, empty, with a new
// UIDVALIDITY and its special-use attributes kept.
func (s *MemServer) Recreate(mailbox string) {
	s.t.Helper()
	s.mu.Lock()
	attrs := s.specialUse[mailbox]
	s.mu.Unlock()
	s.Delete(mailbox)
	s.Create(mailbox, attrs...)
}

// Reset implements Mailboxes (through the helper connection).
func (s *MemServer) Reset(mailbox string) {
	s.t.Helper()
	s.Admin().Reset(mailbox)
}

// Fail makes every later command of kind cmd from a client (not the
// helper) answer err, until Fail(cmd, nil). cmd is one of LOGIN (which
// covers AUTHENTICATE with WithOAuth or WithTokens), SELECT,
// FETCH, STORE, EXPUNGE (UID EXPUNGE), COPY, MOVE, SEARCH, LIST, CREATE,
// or "SELECT <mailbox>" for the SELECTs of that one mailbox.
// An *imap.Error goes to the client as it is; any other error becomes
// NO [SERVERBUG].
func (s *MemServer) Fail(cmd string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.faults, cmd)
	} else {
		s.faults[cmd] = err
	}
}

// Block makes every later command of kind cmd (as for Fail) from a client
// hang until release is called or the test ends.
func (s *MemServer) Block(cmd string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.blocks[cmd] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.blocks[cmd] == ch {
				delete(s.blocks, cmd)
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// fault waits out a Block of cmd and returns the error set by Fail.
func (s *MemServer) fault(cmd string) error {
	s.mu.Lock()
	ch := s.blocks[cmd]
	err := s.faults[cmd]
	s.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-s.done:
			return ErrUnavailable
		}
	}
	return err
}

// Commands returns the commands clients sent so far, in order.
func (s *MemServer) Commands() []Command { return s.rec.all() }

// CommandsNamed returns the commands with one of the given names ("UID STORE").
func (s *MemServer) CommandsNamed(names ...string) []Command {
	var out []Command
	for _, c := range s.rec.all() {
		if slices.Contains(names, c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// ResetCommands forgets the commands recorded so far.
func (s *MemServer) ResetCommands() { s.rec.reset() }

// mailboxes returns the names of the mailboxes, sorted, with their
// special-use attributes.
func (s *MemServer) mailboxes() ([]string, map[string][]imap.MailboxAttr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.specialUse))
	attrs := make(map[string][]imap.MailboxAttr, len(s.specialUse))
	for name, a := range s.specialUse {
		names = append(names, name)
		attrs[name] = a
	}
	slices.Sort(names)
	return names, attrs
}

func (s *MemServer) String() string { return fmt.Sprintf("MemServer(%s)", s.Addr) }

// SetPassword changes the account's password for client logins from now
// on, as an administrator changing it upstream would; connections already
// logged in stay logged in. The MemServer's own helper keeps the old one.
func (s *MemServer) SetPassword(pass string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.newPass = pass
}

// checkPassword reports whether pass is the password of a client login
// after SetPassword; set is false when SetPassword was not called.
func (s *MemServer) checkPassword(pass string) (ok, set bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.newPass == "" {
		return false, false
	}
	return pass == s.newPass, true
}

// ByeAll sends "* BYE" to every client connection open now and closes it,
// as a server going down for maintenance does. The MemServer's own helper
// connections are left alone.
func (s *MemServer) ByeAll(text string) int {
	s.mu.Lock()
	var conns []*imapserver.Conn
	for c, addr := range s.conns {
		if !s.internal[addr] {
			conns = append(conns, c)
		}
		delete(s.conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Bye(text)
	}
	return len(conns)
}
