package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/oauthtest"
)

// TestOAuthWalkthrough runs testdata/oauth/walkthrough.sh, README's
// fake-provider walk-through: device-code enrollment with `popbridge
// account add`, curl and fetchmail reading the mail with the issued app
// password, -ERR [AUTH] after the grant is revoked, and `account list`
// saying so. Besides the script's own checks, what curl and fetchmail
// delivered is compared with the fake server's messages byte for byte.
func TestOAuthWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	for _, bin := range []string{"curl", "fetchmail", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	dir := t.TempDir()
	env := append(os.Environ(), "WALK_DIR="+dir, "LC_ALL=C")
	for _, v := range []string{"WALK_PROVIDER_PORT", "WALK_IMAP_PORT", "WALK_POP3_PORT"} {
		env = append(env, v+"="+strconv.Itoa(freePort(t)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", filepath.Join("..", "..", "testdata", "oauth", "walkthrough.sh"))
	cmd.Env = env
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("walkthrough output:\n%s", out)
	if err != nil {
		t.Fatalf("walkthrough: %v", err)
	}
	for _, want := range []string{"walkthrough OK", "-ERR [AUTH] the upstream authorization of this account was revoked", "reconsent-needed"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("the output lacks %q", want)
		}
	}
	want := oauthtest.SampleMessages(oauthtest.User, 3)
	got, err := os.ReadFile(filepath.Join(dir, "curl-1.eml"))
	if err != nil || !bytes.Equal(got, want[0]) {
		t.Errorf("curl's RETR 1 = %q (%v), want %q", got, err, want[0])
	}
	mbox, err := os.ReadFile(filepath.Join(dir, "fetchmail", "mbox"))
	if err != nil {
		t.Fatal(err)
	}
	// fetchmail adds a Received: line and delivers LF line ends.
	for i, m := range want {
		body := strings.ReplaceAll(string(m), "\r\n", "\n")
		if !strings.Contains(string(mbox), body) {
			t.Errorf("fetchmail did not deliver message %d intact", i+1)
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
