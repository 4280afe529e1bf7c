package bridge

// Real clients from Debian over TLS: curl with STLS
// (--ssl-reqd), implicit TLS (pop3s://) and OAuth (--oauth2-bearer),
// python3 poplib with stls(), openssl s_client -starttls pop3. Each runs
// against a certificate generated here and must retrieve a message byte
// for byte. A test is skipped only when its program is not installed
// (.ci/run installs them).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/popclient"
)

// tlsClientEnv is popbridge with a certificate for 127.0.0.1, STLS on
// addr, implicit TLS on tlsAddr, and cleartext logins refused.
type tlsClientEnv struct {
	*secServer
	up     *testUpstream
	caFile string
	host   string
	port   string // of addr
	tport  string // of tlsAddr
}

func newTLSClientEnv(t *testing.T, mutate ...func(*Config)) *tlsClientEnv {
	t.Helper()
	dir := t.TempDir()
	cert := newTestCert(t, "127.0.0.1")
	up := startTestUpstream(t, upOpts{})
	cfg := secConfig(up.addr)
	cfg.Auth.AllowInsecureAuth = false
	cfg.Server.ListenTLS = "127.0.0.1:0"
	cfg.TLS.CertFile, cfg.TLS.KeyFile = cert.write(t, dir)
	for _, m := range mutate {
		m(&cfg)
	}
	s := startSec(t, cfg)
	e := &tlsClientEnv{secServer: s, up: up, caFile: cfg.TLS.CertFile}
	e.host, e.port, _ = net.SplitHostPort(s.addr)
	_, e.tport, _ = net.SplitHostPort(s.tlsAddr)
	return e
}

// runTool runs a program with a 60 s timeout, stdin as given, and
// returns its stdout; stderr goes into the error.
func runTool(t *testing.T, stdin string, name string, args ...string) ([]byte, error) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "HOME="+t.TempDir())
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w\nstderr:\n%s\nstdout:\n%s", name, strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.Bytes(), nil
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: got %d octets, want %d\n got %q\nwant %q", what, len(got), len(want), got, want)
	}
}

func TestCurlSTLSAndPOP3S(t *testing.T) {
	e := newTLSClientEnv(t)
	auth := secUser + ":" + secPassword
	out, err := runTool(t, "", "curl", "-sS", "--max-time", "30", "--ssl-reqd", "--cacert", e.caFile,
		fmt.Sprintf("pop3://%s:%s/1", e.host, e.port), "-u", auth)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "curl --ssl-reqd RETR 1", out, secMessages[0])

	out, err = runTool(t, "", "curl", "-sS", "--max-time", "30", "--cacert", e.caFile,
		fmt.Sprintf("pop3s://%s:%s/2", e.host, e.tport), "-u", auth)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "curl pop3s:// RETR 2", out, secMessages[1])

	// Without TLS, curl's login is refused: no message, an error.
	if _, err := runTool(t, "", "curl", "-sS", "--max-time", "30", fmt.Sprintf("pop3://%s:%s/1", e.host, e.port), "-u", auth); err == nil {
		t.Error("curl without TLS logged in")
	}
	// An unknown certificate is refused by curl.
	if _, err := runTool(t, "", "curl", "-sS", "--max-time", "30", fmt.Sprintf("pop3s://%s:%s/1", e.host, e.tport), "-u", auth); err == nil {
		t.Error("curl accepted a certificate it does not trust")
	}
}

// curl --oauth2-bearer works end to end: the token goes to the upstream
// as the mechanism curl chose, with and without an initial response. curl
// 7.88 takes OAUTHBEARER whenever it is offered (whatever
// --login-options says), so XOAUTH2 is tested with a server offering only
// that.
func TestCurlOAuth2Bearer(t *testing.T) {
	for _, mech := range []string{"OAUTHBEARER", "XOAUTH2"} {
		t.Run(mech, func(t *testing.T) {
			e := newTLSClientEnv(t, func(c *Config) { c.Auth.OAuthMechanisms = []string{mech} })
			for i, extra := range [][]string{nil, {"--sasl-ir"}} {
				args := append([]string{"-sS", "--max-time", "30", "--ssl-reqd", "--cacert", e.caFile,
					fmt.Sprintf("pop3://%s:%s/1", e.host, e.port), "-u", secUser + "#curl:", "--oauth2-bearer", secToken}, extra...)
				out, err := runTool(t, "", "curl", args...)
				if err != nil {
					t.Fatal(err)
				}
				sameBytes(t, fmt.Sprintf("curl --oauth2-bearer %v", extra), out, secMessages[0])
				want := mech + " " + secUser + " ok"
				if att := e.up.attempts(); len(att) != i+1 || att[i] != want {
					t.Errorf("upstream attempts %q, want %q last", att, want)
				}
			}
			// A wrong token is refused.
			if _, err := runTool(t, "", "curl", "-sS", "--max-time", "30", "--ssl-reqd", "--cacert", e.caFile,
				fmt.Sprintf("pop3://%s:%s/1", e.host, e.port), "-u", secUser+":", "--oauth2-bearer", "ya29.expired"); err == nil {
				t.Error("curl with a wrong token retrieved a message")
			}
		})
	}
}

// poplibScript logs in with STLS (or POP3_SSL), checks CAPA around the
// upgrade, and writes message 1 to stdout as it came (lines joined with
// CRLF; poplib undoes dot-stuffing).
const poplibScript = `
import poplib, ssl, sys
host, port, cafile, user, password, mode = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
if mode == "stls":
    p = poplib.POP3(host, int(port), timeout=30)
    before = p.capa()
    assert "STLS" in before, before
    assert "USER" not in before, before
    p.stls(context=ctx)
    after = p.capa()
    assert "STLS" not in after, after
    assert "USER" in after, after
else:
    p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=30)
p.user(user)
p.pass_(password)
resp, lines, octets = p.retr(1)
sys.stdout.buffer.write(b"".join(l + b"\r\n" for l in lines))
p.quit()
`

func TestPoplibSTLS(t *testing.T) {
	e := newTLSClientEnv(t)
	script := filepath.Join(t.TempDir(), "stls.py")
	os.WriteFile(script, []byte(poplibScript), 0o600)
	out, err := runTool(t, "", "python3", script, e.host, e.port, e.caFile, secUser, secPassword, "stls")
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "poplib stls() RETR 1", out, secMessages[0])
	out, err = runTool(t, "", "python3", script, e.host, e.tport, e.caFile, secUser+"#py", secPassword, "ssl")
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "poplib POP3_SSL RETR 1", out, secMessages[0])
}

func TestOpenSSLStartTLS(t *testing.T) {
	e := newTLSClientEnv(t)
	stdin := fmt.Sprintf("CAPA\nUSER %s\nPASS %s\nRETR 2\nQUIT\n", secUser, secPassword)
	out, err := runTool(t, stdin, "openssl", "s_client", "-quiet", "-crlf", "-verify_return_error",
		"-CAfile", e.caFile, "-starttls", "pop3", "-connect", net.JoinHostPort(e.host, e.port))
	if err != nil {
		t.Fatal(err)
	}
	// s_client did the greeting and STLS; the rest is the answers to the
	// commands above.
	r := bufio.NewReader(bytes.NewReader(out))
	line := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("openssl output ends early: %v\n%s", err, out)
		}
		return strings.TrimRight(l, "\r\n")
	}
	if l := line(); l != "+OK capability list follows" {
		t.Fatalf("CAPA: %q\n%s", l, out)
	}
	capa, err := popclient.ReadMulti(r, func() {})
	if err != nil {
		t.Fatal(err)
	}
	if c := string(capa); strings.Contains(c, "STLS") || !strings.Contains(c, "USER\r\n") {
		t.Errorf("CAPA after STLS:\n%s", c)
	}
	for _, want := range []string{"+OK send PASS", "+OK maildrop has", "+OK "} {
		if l := line(); !strings.HasPrefix(l, want) {
			t.Fatalf("got %q, want %q\n%s", l, want, out)
		}
	}
	body, err := popclient.ReadMulti(r, func() {})
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "openssl s_client RETR 2", body, secMessages[1])
	if l := line(); !strings.HasPrefix(l, "+OK") {
		t.Errorf("QUIT: %q", l)
	}
}
