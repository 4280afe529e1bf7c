package bridge

// Helpers of the account-identity tests: an upstream with several
// accounts that reads login names the way a real server may, and a
// POP3 login that reports instead of failing the test, for use from many
// goroutines.

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/popclient"
)

// usersPassword is the password of every account of a usersUpstream.
const usersPassword = imaptest.UsersPassword

// usersUpstream is an imaptest.Users server (several accounts, login names
// read up to their first NUL, folded to lower case or not) whose every
// account holds one message of its own in INBOX.
type usersUpstream struct {
	*imaptest.Users
	addr string
	raw  map[string][]byte // each account's message
}

func startUsersUpstream(t testing.TB, fold bool, names ...string) *usersUpstream {
	t.Helper()
	u := &usersUpstream{Users: imaptest.NewUsers(t, fold, names...), raw: map[string][]byte{}}
	u.addr = u.Addr
	for _, name := range names {
		raw := message("for-"+name, "mail of "+name, "This message belongs to "+name+" only.\r\n")
		u.Append(name, raw)
		u.raw[name] = raw
	}
	return u
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
