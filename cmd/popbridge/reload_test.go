package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

// TestSIGHUPReloadsCertificate runs `popbridge serve` with implicit TLS,
// replaces its certificate and sends SIGHUP: new connections get the new
// certificate, the session opened before goes on, an unusable file keeps
// the certificate in use, and each reload is logged.
func TestSIGHUPReloadsCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certA, keyA, leafA := selfSigned(t, 101)
	certB, keyB, leafB := selfSigned(t, 202)
	os.WriteFile(certFile, certA, 0o600)
	os.WriteFile(keyFile, keyA, 0o600)
	cfg := filepath.Join(dir, "popbridge.toml")
	os.WriteFile(cfg, []byte(`[server]
listen = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
[tls]
cert_file = "`+certFile+`"
key_file = "`+keyFile+`"
[upstream]
address = "127.0.0.1:1"
security = "none"
[state]
path = "`+filepath.Join(dir, "state.db")+`"
`), 0o600)

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
	lines := make(chan map[string]any, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	waitLog := func(msg string) map[string]any {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-lines:
				if !ok {
					t.Fatalf("popbridge exited before logging %q", msg)
				}
				if m["msg"] == msg {
					return m
				}
			case <-timeout:
				t.Fatalf("no %q in the log", msg)
			}
		}
	}
	started := waitLog("popbridge started")
	addr, _ := started["pop3s"].(string)
	if addr == "" {
		t.Fatalf("no pop3s address in %v", started)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leafA)
	pool.AddCert(leafB)
	dial := func() (*tls.Conn, *bufio.Reader, int64) {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(c)
		if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("greeting %q", l)
		}
		return c, r, c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	old, oldR, serial := dial()
	if serial != 101 {
		t.Fatalf("certificate %d, want 101", serial)
	}

	os.WriteFile(certFile, certB, 0o600)
	os.WriteFile(keyFile, keyB, 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	if m := waitLog("SIGHUP: TLS certificate reloaded"); m["level"] != "info" {
		t.Errorf("reload logged as %v", m)
	}
	if _, _, serial := dial(); serial != 202 {
		t.Errorf("after SIGHUP: certificate %d, want 202", serial)
	}
	// The session from before the reload is still served.
	io.WriteString(old, "CAPA\r\n")
	if l, err := oldR.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Errorf("old session after SIGHUP: %q %v", l, err)
	}

	os.WriteFile(certFile, []byte("garbage"), 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	if m := waitLog("SIGHUP: TLS certificate not reloaded"); m["level"] != "error" || !strings.Contains(m["error"].(string), "keeping the current one") {
		t.Errorf("failed reload logged as %v", m)
	}
	if _, _, serial := dial(); serial != 202 {
		t.Errorf("after a failed reload: certificate %d, want 202", serial)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	waitLog("stopped")
}
