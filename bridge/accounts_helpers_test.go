package bridge

// Helpers of the account-identity tests: an upstream with several
// accounts that reads login names the way a real server may, and a
// POP3 login that reports instead of failing the test, for use from many
// goroutines.

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/popbridge/popbridge/internal/popclient"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// usersPassword is the password of every account of a usersUpstream.
const usersPassword = "pw-4-everyone"

// usersUpstream is an in-process IMAP server with one account per name
// given, each holding one message of its own in INBOX. Like Dovecot (a C
// program) it reads a login name only up to its first NUL; with fold it
// also looks names up in lower case, as Dovecot's default
// auth_username_format = %Lu does, and without it names are
// case-sensitive, as on servers that keep the case. It records every
// LOGIN's name as sent.
type usersUpstream struct {
	addr  string
	fold  bool
	users map[string]*imapmemserver.User
	raw   map[string][]byte // each account's message

	mu     sync.Mutex
	logins []string
}

func startUsersUpstream(t testing.TB, fold bool, names ...string) *usersUpstream {
	t.Helper()
	u := &usersUpstream{fold: fold, users: map[string]*imapmemserver.User{}, raw: map[string][]byte{}}
	for _, name := range names {
		usr := imapmemserver.NewUser(name, usersPassword)
		if err := usr.Create("INBOX", nil); err != nil {
			t.Fatal(err)
		}
		if err := usr.Create("Trash", &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrTrash}}); err != nil {
			t.Fatal(err)
		}
		raw := message("for-"+name, "mail of "+name, "This message belongs to "+name+" only.\r\n")
		if _, err := usr.Append("INBOX", bytes.NewReader(raw), &imap.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
		u.users[name] = usr
		u.raw[name] = raw
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &usersSession{up: u}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       zap.NewStdLog(zaptest.NewLogger(t).Named("users-upstream")),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

// loginsOf counts the LOGINs sent for name, octet for octet.
func (u *usersUpstream) loginsOf(name string) int {
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

// allLogins returns every LOGIN's name as sent.
func (u *usersUpstream) allLogins() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.logins...)
}

type usersSession struct {
	*imapmemserver.UserSession // nil until Login
	up                         *usersUpstream
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

// popLogin is one POP3 connection of internal/popclient that reports
// errors instead of failing the test, so that many goroutines can use it.
type popLogin struct {
	*popclient.Conn
}

// dialLogin connects to addr from the local address local ("" for any)
// and reads the greeting.
func dialLogin(addr, local string) (*popLogin, error) {
	c, greet, err := popclient.Dial(addr, popclient.Options{Local: local, Timeout: 60 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("greeting %q: %w", greet, err)
	}
	return &popLogin{c}, nil
}

// cmd sends one line and returns the answer's first line.
func (p *popLogin) cmd(line string) (string, error) { return p.Cmd(line) }

// userPass logs in with USER and PASS and returns the answer to PASS
// (or to USER when that was refused).
func (p *popLogin) userPass(user, pass string) (string, error) {
	r, err := p.cmd("USER " + user)
	if err != nil || !strings.HasPrefix(r, "+OK") {
		return r, err
	}
	return p.cmd("PASS " + pass)
}

// authLogin logs in with AUTH LOGIN, which carries any octet in the name.
func (p *popLogin) authLogin(user, pass string) (string, error) {
	enc := base64.StdEncoding.EncodeToString
	r, err := p.cmd("AUTH LOGIN " + enc([]byte(user)))
	if err != nil || !strings.HasPrefix(r, "+ ") {
		return r, err
	}
	return p.cmd(enc([]byte(pass)))
}

func (p *popLogin) close() { p.Close() }

// mustLogin is dialLogin and userPass for the test goroutine: it fails
// the test unless the login is answered +OK.
func mustLogin(t *testing.T, addr, user, pass string) *popLogin {
	t.Helper()
	p, err := dialLogin(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	r, err := p.userPass(user, pass)
	if err != nil || !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login as %q: %q %v", user, r, err)
	}
	return p
}

// answerOf is one login's answer: the line, or why there was none.
func answerOf(r string, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	return r
}
