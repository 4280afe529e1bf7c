package imaptest

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// UsersPassword is the password of every account of a Users server.
const UsersPassword = "pw-4-everyone"

// Users is an in-process IMAP server on 127.0.0.1 with one account per
// name given, each with an empty INBOX and a special-use Trash. Like
// Dovecot (a C program) it reads a login name only up to its first NUL;
// with fold it also looks names up in lower case, as Dovecot's default
// auth_username_format = %Lu does, and without it names are
// case-sensitive, as on servers that keep the case. Every account logs in
// with UsersPassword. It records every LOGIN's name as sent.
type Users struct {
	Addr string

	t     testing.TB
	fold  bool
	users map[string]*imapmemserver.User
	log   testLog

	mu     sync.Mutex
	logins []string
}

// NewUsers starts a Users server that stops when the test ends.
func NewUsers(t testing.TB, fold bool, names ...string) *Users {
	t.Helper()
	u := &Users{t: t, fold: fold, users: map[string]*imapmemserver.User{}, log: testLog{t: t, prefix: "users: "}}
	for _, name := range names {
		usr := imapmemserver.NewUser(name, UsersPassword)
		if err := usr.Create("INBOX", nil); err != nil {
			t.Fatalf("imaptest: create INBOX of %s: %v", name, err)
		}
		if err := usr.Create("Trash", &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrTrash}}); err != nil {
			t.Fatalf("imaptest: create Trash of %s: %v", name, err)
		}
		u.users[name] = usr
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &usersSession{up: u}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       &u.log,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("imaptest: listen: %v", err)
	}
	u.Addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() {
		u.log.stop()
		srv.Close()
	})
	return u
}

// Append adds raw to the INBOX of the account name, byte for byte.
func (u *Users) Append(name string, raw []byte) {
	u.t.Helper()
	if _, err := u.users[name].Append("INBOX", bytes.NewReader(raw), &imap.AppendOptions{}); err != nil {
		u.t.Fatalf("imaptest: append to the INBOX of %s: %v", name, err)
	}
}

// LoginsOf counts the LOGINs sent for name, octet for octet.
func (u *Users) LoginsOf(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, l := range u.logins {
		if l == name {
			n++
		}
	}
	return n
}

// Logins returns every LOGIN's name as sent.
func (u *Users) Logins() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.logins...)
}

type usersSession struct {
	*imapmemserver.UserSession // nil until Login
	up                         *Users
}

func (s *usersSession) Login(username, password string) error {
	s.up.mu.Lock()
	s.up.logins = append(s.up.logins, username)
	s.up.mu.Unlock()
	name, _, _ := strings.Cut(username, "\x00")
	if s.up.fold {
		name = strings.ToLower(name)
	}
	usr := s.up.users[name]
	if usr == nil {
		return imapserver.ErrAuthFailed
	}
	if err := usr.Login(name, password); err != nil {
		return err
	}
	s.UserSession = imapmemserver.NewUserSession(usr)
	return nil
}

func (s *usersSession) Close() error {
	if s.UserSession == nil {
		return nil
	}
	return s.UserSession.Close()
}

// testLog is an imapserver logger that writes to the test log until stop.
type testLog struct {
	t      testing.TB
	prefix string

	mu      sync.Mutex
	stopped bool
}

func (l *testLog) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.t.Logf("imapserver: "+l.prefix+format, args...)
	}
}

func (l *testLog) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}
