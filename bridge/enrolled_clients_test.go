package bridge

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popbridge/popbridge/internal/oauthtest"
)

// TestEnrolledPoplib: python3's poplib (testdata/clients/poplib_fetch.py)
// reads an enrolled account with its app password: every message byte
// for byte as the fake OAuth-only IMAP server holds it, the same UIDLs in
// two runs (and the ones a Go POP3 client sees); a wrong app password is
// refused, with no upstream login attempted.
func TestEnrolledPoplib(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	e := newOAuthEnv(t, oauthtest.Options{RequireOfflineAccess: true})
	e.start()
	pw := e.enrollDevice(oauthtest.User, "fake", "")
	const user = oauthtest.User + "#poplib"
	want := e.mailOf(oauthtest.User)

	scripts, err := filepath.Abs("../testdata/clients")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(e.addr)
	h := &clientHost{host: host, port: port, user: user, pass: pw, home: t.TempDir(), scripts: scripts}
	run := func(pass string) (string, string, error) {
		out := t.TempDir()
		h.pass = pass
		args := []string{filepath.Join(scripts, "poplib_fetch.py"), host, port, user, pass, out}
		output, err := runClient(context.Background(), h, nil, "python3", args...)
		return out, output, err
	}

	var uidls []string
	for i := 1; i <= 2; i++ {
		out, output, err := run(pw)
		if err != nil {
			t.Fatalf("poplib run %d: %v\n%s", i, err, output)
		}
		for n, m := range want {
			got, err := os.ReadFile(filepath.Join(out, fmt.Sprintf("%03d.eml", n+1)))
			if err != nil || !bytes.Equal(got, m) {
				t.Errorf("run %d: message %d = %q (%v), want %q", i, n+1, got, err, m)
			}
		}
		if extra, _ := filepath.Glob(filepath.Join(out, "*.eml")); len(extra) != len(want) {
			t.Errorf("run %d: poplib wrote %d messages, want %d", i, len(extra), len(want))
		}
		b, err := os.ReadFile(filepath.Join(out, "uidl.txt"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				got = append(got, f[1])
			}
		}
		if len(got) != len(want) {
			t.Fatalf("run %d: uidl.txt lists %d messages, want %d:\n%s", i, len(got), len(want), b)
		}
		if uidls == nil {
			uidls = got
		} else if strings.Join(got, " ") != strings.Join(uidls, " ") {
			t.Errorf("run %d: UIDLs %q, first run %q", i, got, uidls)
		}
	}
	if got := e.readAll(user, pw, want); strings.Join(got, " ") != strings.Join(uidls, " ") {
		t.Errorf("a Go client sees UIDLs %q, poplib %q", got, uidls)
	}

	_, before := e.xoauthLogins(oauthtest.User)
	tokens := e.fake.Provider.Stats().TokenRequests
	_, output, err := run("wrong-" + pw)
	if exitCode(err) != 1 || !strings.Contains(output, "-ERR") {
		t.Errorf("poplib with a wrong app password: %v, want exit status 1 with -ERR:\n%s", err, output)
	}
	if _, after := e.xoauthLogins(oauthtest.User); after != before {
		t.Errorf("a wrong app password made %d upstream logins", after-before)
	}
	if n := e.fake.Provider.Stats().TokenRequests; n != tokens {
		t.Errorf("a wrong app password made %d token requests", n-tokens)
	}
}
