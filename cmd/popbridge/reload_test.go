package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// selfSigned returns the PEM certificate and key of a new self-signed
// certificate for 127.0.0.1 with the given serial number.
func selfSigned(t *testing.T, serial int64) (certPEM, keyPEM []byte, leaf *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(der)
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), leaf
}

// TestSIGHUPReloadsConfiguration runs `popbridge serve` with a POP3 and an
// implicit-TLS listener and a session logged in, rewrites the configuration
// file and sends SIGHUP: the log level, a limit, the delete policy and the
// certificate change for what comes next, while the session opened before
// keeps its delete policy and completes RETR and QUIT. A key that cannot
// change at runtime is named and kept; a file with two bad values changes
// nothing and both are logged; an unusable certificate keeps the one in use.
func TestSIGHUPReloadsConfiguration(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	up := killMemUpstream(t)
	up.append(t, "INBOX", killMessage("one"))
	up.append(t, "INBOX", killMessage("two"))
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certA, keyA, leafA := selfSigned(t, 101)
	certB, keyB, leafB := selfSigned(t, 202)
	os.WriteFile(certFile, certA, 0o600)
	os.WriteFile(keyFile, keyA, 0o600)
	cfg := filepath.Join(dir, "popbridge.toml")
	write := func(level, listen string, sessions int, policy string) {
		t.Helper()
		text := `[server]
listen = "` + listen + `"
listen_tls = "127.0.0.1:0"
[tls]
cert_file = "` + certFile + `"
key_file = "` + keyFile + `"
[auth]
allow_insecure_auth = true
[upstream]
address = "` + up.addr + `"
security = "none"
[delete]
policy = "` + policy + `"
move_to = "Trash"
[limits]
max_sessions_per_account = ` + strconv.Itoa(sessions) + `
login_failure_delay = "0s"
[state]
path = "` + filepath.Join(dir, "state.db") + `"
[log]
level = "` + level + `"
`
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("info", "127.0.0.1:0", 10, "move")

	cmd := exec.Command(bin, "serve", "-config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	// The log is JSON lines on stderr.
	lines := make(chan map[string]any, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	var seen []map[string]any // every line read so far
	waitLog := func(msg string) map[string]any {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-lines:
				if !ok {
					t.Fatalf("popbridge exited before logging %q", msg)
				}
				seen = append(seen, m)
				if m["msg"] == msg {
					return m
				}
			case <-timeout:
				t.Fatalf("no %q in the log", msg)
			}
		}
	}
	logged := func(msg string) int {
		n := 0
		for _, m := range seen {
			if m["msg"] == msg {
				n++
			}
		}
		return n
	}
	started := waitLog("popbridge started")
	addr, _ := started["pop3"].(string)
	tlsAddr, _ := started["pop3s"].(string)
	if addr == "" || tlsAddr == "" {
		t.Fatalf("no pop3 or pop3s address in %v", started)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leafA)
	pool.AddCert(leafB)
	serial := func() int64 {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", tlsAddr, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	login := func(device string) (*killPOP, string) {
		t.Helper()
		p := dialKillPOP(t, addr)
		p.ok("USER " + up.user + "#" + device)
		p.send("PASS " + up.pass)
		return p, p.line()
	}
	if n := serial(); n != 101 {
		t.Fatalf("certificate %d, want 101", n)
	}

	// A session logs in under the move policy and stays connected.
	old, r := login("old")
	if !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login: %q", r)
	}
	// Opens one more session of the account: allowed with 10.
	p, r := login("second")
	if !strings.HasPrefix(r, "+OK") {
		t.Fatalf("second session before the reload: %q", r)
	}
	p.ok("QUIT")

	// Reload: debug log, one session per account, the flag policy, the
	// other certificate, and a listen address that cannot change.
	os.WriteFile(certFile, certB, 0o600)
	os.WriteFile(keyFile, keyB, 0o600)
	write("debug", "127.0.0.1:1", 1, "flag")
	cmd.Process.Signal(syscall.SIGHUP)
	m := waitLog("configuration reloaded")
	if m["level"] != "info" || m["tls_not_after"] == nil {
		t.Errorf("reload logged as %v", m)
	}
	changed := fmt.Sprint(m["changed"])
	for _, k := range []string{"log.level", "delete.policy", "limits.max_sessions_per_account"} {
		if !strings.Contains(changed, k) {
			t.Errorf("changed keys %s lack %s", changed, k)
		}
	}
	if strings.Contains(changed, "server.listen") {
		t.Errorf("changed keys %s name server.listen, which cannot change", changed)
	}
	if m := waitLog("configuration keys that cannot change while popbridge runs kept their running values; restart to apply them"); fmt.Sprint(m["kept"]) != "[server.listen]" {
		t.Errorf("kept keys: %v", m["kept"])
	}
	if n := serial(); n != 202 {
		t.Errorf("after SIGHUP: certificate %d, want 202", n)
	}
	// The limit: a second session of the account is refused now.
	p, r = login("second")
	if !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Errorf("second session after lowering the limit to 1: %q", r)
	}
	p.c.Close()

	// The session from before the reload: RETR, DELE, QUIT under the move
	// policy it started with.
	old.ok("RETR 1")
	if body := old.multi(); !bytes.Equal(body, killMessage("one")) {
		t.Errorf("RETR after the reload: %q", body)
	}
	old.ok("DELE 1")
	old.ok("QUIT")
	if n := len(up.messages(t, "Trash")); n != 1 {
		t.Errorf("Trash holds %d messages after the old session's QUIT, want 1 (it keeps the move policy)", n)
	}

	// The new log level: a login logs its debug line "mailbox synced";
	// the new delete policy: DELE flags.
	if n := logged("mailbox synced"); n != 0 {
		t.Fatalf("debug lines before the reload: %d", n)
	}
	p, r = login("new")
	if !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login after the reload: %q", r)
	}
	waitLog("mailbox synced")
	p.ok("DELE 1")
	p.ok("QUIT")
	inbox := up.messages(t, "INBOX")
	if len(inbox) != 1 || !slices.Contains(inbox[0].flags, "$pop3deleted") {
		t.Errorf("INBOX after DELE under the flag policy: %+v", inbox)
	}

	// Two bad values: nothing changes, both are logged.
	os.WriteFile(cfg, []byte("[delete]\npolicy = \"shred\"\n[limits]\nmax_connections = -1\n"), 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	m = waitLog("SIGHUP: configuration not reloaded; the running one stays")
	if e := fmt.Sprint(m["error"]); m["level"] != "error" || !strings.Contains(e, "delete.policy") || !strings.Contains(e, "limits.max_connections") {
		t.Errorf("bad file logged as %v", m)
	}
	p, r = login("second")
	if !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login after the failed reload: %q", r)
	}
	q, r := login("third")
	if !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Errorf("the limit of 1 session did not stay after a failed reload: %q", r)
	}
	q.c.Close()
	p.ok("QUIT")

	// An unusable certificate keeps the one in use, and the rest.
	write("debug", "127.0.0.1:0", 1, "flag")
	os.WriteFile(certFile, []byte("garbage"), 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	if m := waitLog("SIGHUP: configuration not reloaded; the running one stays"); !strings.Contains(fmt.Sprint(m["error"]), "keeping the running configuration and certificate") {
		t.Errorf("failed certificate reload logged as %v", m)
	}
	if n := serial(); n != 202 {
		t.Errorf("after a failed reload: certificate %d, want 202", n)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	waitLog("stopped")
}
