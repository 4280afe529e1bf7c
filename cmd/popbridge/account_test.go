package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/internal/oauthtest"
)

// The account subcommands, run in process (accountCmd) against the fake
// OAuth provider, and a POP3 server in process on the same state to see
// what they did.
//
//	go test -race -count=1 -run 'TestAccount' ./cmd/popbridge/

// serveInProcess runs popbridge on the configuration e.cfg until stop.
func (e *oauthServeEnv) serveInProcess(t *testing.T) (addr string, stop func()) {
	t.Helper()
	cfg, err := bridge.LoadConfig(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	st, err := openStore(context.Background(), cfg, false, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := bridge.NewServer(cfg, st, log)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		st.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		st.Close()
	}
	t.Cleanup(stop)
	return srv.Addr().String(), stop
}

// refusedLogin logs in with pass and returns the answer to PASS, which
// must be -ERR.
func refusedLogin(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c := dialKillPOP(t, addr)
	c.ok("USER " + user)
	c.send("PASS " + pass)
	l := c.line()
	if !strings.HasPrefix(l, "-ERR") {
		t.Fatalf("PASS: %q, want -ERR", l)
	}
	return l
}

// passwordOf returns the app password of label in the output of account
// add or passwd -add.
func passwordOf(t *testing.T, out, label string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^app password "` + regexp.QuoteMeta(label) + `"(?: of \S+)? \(shown once\): (\S+)$`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no app password %q in:\n%s", label, out)
	}
	return m[1]
}

// TestAccountPasswd: `account passwd -add` gives an account more app
// passwords (generated, or set from -password-file), each unlocked by an
// existing one read from stdin, and `account passwd -revoke` takes one
// away: a login with the revoked password is refused (-ERR [AUTH]) while
// the others go on reading the same mail with the same UIDLs, and
// `account list` names the labels left.
func TestAccountPasswd(t *testing.T) {
	e := newOAuthServeEnv(t, oauthtest.Options{AutoApprove: oauthtest.User}, "device", "")
	first := e.enroll(t, "")

	out, err := e.account(t, first+"\n", "passwd", oauthtest.User, "-add", "scanner")
	if err != nil {
		t.Fatalf("passwd -add scanner: %v\n%s", err, out)
	}
	scanner := passwordOf(t, out, "scanner")
	set := "operator-chosen-password-42"
	file := filepath.Join(e.dir, "laptop.pw")
	if err := os.WriteFile(file, []byte(set+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Unlocked with the password just added.
	out, err = e.account(t, scanner+"\n", "passwd", oauthtest.User, "-add", "laptop", "-password-file", file)
	if err != nil {
		t.Fatalf("passwd -add laptop: %v\n%s", err, out)
	}
	if got := passwordOf(t, out, "laptop"); got != set {
		t.Errorf("passwd -add -password-file printed %q, want the file's %q", got, set)
	}
	if _, err := e.account(t, "not-an-app-password\n", "passwd", oauthtest.User, "-add", "x"); err == nil {
		t.Error("passwd -add unlocked with a wrong app password")
	}

	addr, stop := e.serveInProcess(t)
	var uidls []string
	for _, pw := range []string{first, scanner, set} {
		got := e.readAll(t, addr, oauthtest.User, pw)
		if uidls == nil {
			uidls = got
		} else if !slices.Equal(got, uidls) {
			t.Errorf("UIDLs %q, want %q", got, uidls)
		}
	}
	stop()

	out, err = e.account(t, "", "passwd", oauthtest.User, "-revoke", "default")
	if err != nil {
		t.Fatalf("passwd -revoke: %v\n%s", err, out)
	}
	if want := `app password "default" of alice@example.com revoked`; !strings.Contains(out, want) {
		t.Errorf("passwd -revoke printed %q, want %q", out, want)
	}
	out, err = e.account(t, "", "list")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^alice@example\.com .* scanner,laptop$`).MatchString(out) {
		t.Errorf("account list after the revocation:\n%s", out)
	}

	addr, _ = e.serveInProcess(t)
	if l := refusedLogin(t, addr, oauthtest.User, first); !strings.HasPrefix(l, "-ERR [AUTH]") {
		t.Errorf("the revoked password: %q, want -ERR [AUTH]", l)
	}
	for _, pw := range []string{scanner, set} {
		if got := e.readAll(t, addr, oauthtest.User, pw); !slices.Equal(got, uidls) {
			t.Errorf("after the revocation: UIDLs %q, want %q", got, uidls)
		}
	}
}

// TestAccountTest: `account test NAME`, unlocked with the app password on
// stdin, says whether it refreshed the token, that it logged in upstream
// as the account's user, and how many messages the mailbox holds. With
// the access token expired at the provider it refreshes once (the
// provider counts one refresh); right after, the token is still valid and
// no refresh is made.
func TestAccountTest(t *testing.T) {
	e := newOAuthServeEnv(t, oauthtest.Options{AutoApprove: oauthtest.User, Rotation: oauthtest.RotateGrace}, "device", "")
	pw := e.enroll(t, "")
	p := e.fake.Provider

	p.ExpireAccessTokens(oauthtest.User)
	out, err := e.account(t, pw+"\n", "test", oauthtest.User)
	if err != nil {
		t.Fatalf("account test: %v\n%s", err, out)
	}
	want := []string{
		"account alice@example.com: unlocked (app password)",
		"token: refreshed",
		fmt.Sprintf("upstream fake (%s): logged in as alice@example.com", e.fake.IMAP.Addr()),
		"mailbox INBOX: 3 messages",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("account test printed\n%s\nwithout %q", out, w)
		}
	}
	if n := p.Stats().Refreshes; n != 1 {
		t.Errorf("the provider saw %d refreshes, want 1", n)
	}

	out, err = e.account(t, pw+"\n", "test", oauthtest.User)
	if err != nil {
		t.Fatalf("account test: %v\n%s", err, out)
	}
	if !strings.Contains(out, "token: still valid") || !strings.Contains(out, "mailbox INBOX: 3 messages") {
		t.Errorf("second account test printed\n%s", out)
	}
	if n := p.Stats().Refreshes; n != 1 {
		t.Errorf("after the second test the provider saw %d refreshes, want 1", n)
	}

	if out, err := e.account(t, "wrong-app-password\n", "test", oauthtest.User); err == nil {
		t.Errorf("account test with a wrong app password succeeded:\n%s", out)
	}
}

// TestAccountRemove: after `account remove`, the account is gone from
// `account list`, its app password no longer logs in (-ERR [AUTH], with
// pass-through off), and `account test` finds no such account.
func TestAccountRemove(t *testing.T) {
	e := newOAuthServeEnv(t, oauthtest.Options{AutoApprove: oauthtest.User}, "device", "")
	pw := e.enroll(t, "")
	addr, stop := e.serveInProcess(t)
	e.readAll(t, addr, oauthtest.User, pw)
	stop()

	out, err := e.account(t, "", "remove", "Alice@Example.com")
	if err != nil {
		t.Fatalf("account remove: %v\n%s", err, out)
	}
	if out != "account alice@example.com removed\n" {
		t.Errorf("account remove printed %q", out)
	}
	out, err = e.account(t, "", "list")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, oauthtest.User) {
		t.Errorf("account list after the removal:\n%s", out)
	}
	if _, err := e.account(t, pw+"\n", "test", oauthtest.User); err == nil {
		t.Error("account test of a removed account succeeded")
	}
	if _, err := e.account(t, "", "remove", oauthtest.User); err == nil {
		t.Error("removing it again succeeded")
	}
	addr, _ = e.serveInProcess(t)
	if l := refusedLogin(t, addr, oauthtest.User, pw); !strings.HasPrefix(l, "-ERR [AUTH]") {
		t.Errorf("the removed account's app password: %q, want -ERR [AUTH]", l)
	}
}

// TestAccountAddAuthCodePaste: `account add` with the authorization-code
// flow prints the sign-in address; the user's browser (the fake provider's
// Authorize) signs in as the user and is redirected; the redirected
// address pasted on stdin finishes the enrollment. The account then reads
// the user's mail.
func TestAccountAddAuthCodePaste(t *testing.T) {
	e := newOAuthServeEnv(t, oauthtest.Options{}, "authcode", "")
	p := e.fake.Provider
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var printed strings.Builder
	browser := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		done := false
		for sc.Scan() {
			line := sc.Text()
			printed.WriteString(line + "\n")
			if done || !strings.HasPrefix(line, p.AuthURL()+"?") {
				continue
			}
			done = true
			redirected, err := p.Authorize(line, oauthtest.User)
			if err == nil {
				_, err = io.WriteString(inW, "  "+redirected+"\r\n")
			}
			browser <- err
		}
		if !done {
			browser <- fmt.Errorf("no sign-in address was printed")
		}
	}()
	err := accountCmd([]string{"add", oauthtest.User, "-config", e.cfg, "-upstream", "fake", "-label", "pasted"}, inR, outW)
	outW.Close()
	inW.Close()
	<-finished
	if berr := <-browser; berr != nil {
		t.Fatalf("the browser: %v\n%s", berr, printed.String())
	}
	if err != nil {
		t.Fatalf("account add: %v\n%s", err, printed.String())
	}
	out := printed.String()
	if !strings.Contains(out, "Copy that address from the address bar and paste it here") {
		t.Errorf("account add did not ask for the redirected address:\n%s", out)
	}
	pw := passwordOf(t, out, "pasted")
	if n := p.Stats().TokenRequests; n != 1 {
		t.Errorf("the provider saw %d token requests, want 1 (the code exchange)", n)
	}
	list, err := e.account(t, "", "list")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^alice@example\.com +delegated +fake +alice@example\.com +ok `).MatchString(list) {
		t.Errorf("account list:\n%s", list)
	}
	addr, _ := e.serveInProcess(t)
	e.readAll(t, addr, oauthtest.User, pw)
}
