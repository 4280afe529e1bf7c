package bridge

// Helpers of the security tests: test certificates, an upstream
// IMAP server that checks OAuth tokens, and a popbridge whose every log
// line, at Debug level, is kept for inspection.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/popclient"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// The account of the test upstream, and the secrets the tests look for in
// the logs.
const (
	secUser     = "alice@example.org"
	secPassword = "Pw-5ecret-Quartz-91"
	secToken    = "ya29.a0AfH6SMBx-SECRET-token_Zq9~Lm+Kp/Ra=="
)

// secMessages are the messages of the test upstream's INBOX, CRLF ended:
// RETR sends them byte for byte.
var secMessages = [][]byte{
	[]byte("From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: first\r\nMessage-ID: <sec-1@example.org>\r\n\r\nHello Alice.\r\n.A line that starts with a dot.\r\n"),
	[]byte("From: Carol <carol@example.org>\r\nTo: alice@example.org\r\nSubject: second\r\nMessage-ID: <sec-2@example.org>\r\n\r\nSecond message,\r\nthree lines\r\nof body.\r\n"),
}

// testCert is a self-signed certificate with its key, as PEM and parsed.
type testCert struct {
	certPEM, keyPEM []byte
	leaf            *x509.Certificate
	pool            *x509.CertPool
	pair            tls.Certificate
}

var serials struct {
	sync.Mutex
	n int64
}

// newTestCert returns a fresh self-signed certificate for hosts (IP
// addresses or DNS names), with a serial number of its own.
func newTestCert(t testing.TB, hosts ...string) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serials.Lock()
	serials.n++
	serial := serials.n
	serials.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: hosts[0]},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		leaf:    leaf,
		pool:    x509.NewCertPool(),
		pair:    tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
	}
	c.pool.AddCert(leaf)
	return c
}

// write writes the certificate and the key to dir/cert.pem and
// dir/key.pem, replacing them, and returns the paths.
func (c *testCert) write(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, c.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, c.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// upOpts configures a testUpstream.
type upOpts struct {
	mechs       []string  // SASL mechanisms offered (AUTH=...); nil: PLAIN, XOAUTH2, OAUTHBEARER
	cert        *testCert // serve TLS with it: STARTTLS on addr, or implicit TLS with implicitTLS
	implicitTLS bool
}

// testUpstream is an imaptest.MemServer with one account, secUser, that
// logs in with secPassword (LOGIN, AUTHENTICATE PLAIN) or with secToken
// (AUTHENTICATE XOAUTH2 or OAUTHBEARER), secMessages in its INBOX and a
// Trash. A refused token gets the mechanism's error challenge, then NO.
// It records each authentication attempt.
type testUpstream struct {
	*imaptest.MemServer
	addr string // Addr, or TLSAddr with implicitTLS
}

func startTestUpstream(t testing.TB, o upOpts) *testUpstream {
	t.Helper()
	opts := []imaptest.Option{
		imaptest.WithCredentials(secUser, secPassword),
		imaptest.WithTokens(func(_, token string) error {
			if token != secToken {
				return imaptest.ErrOAuthRefused
			}
			return nil
		}, o.mechs...),
	}
	if o.cert != nil {
		opts = append(opts, imaptest.WithCertificate(o.cert.pair))
	}
	u := &testUpstream{MemServer: imaptest.NewMemServer(t, opts...)}
	u.Create("Trash", imap.MailboxAttrTrash)
	for _, m := range secMessages {
		u.Append("INBOX", m)
	}
	u.addr = u.Addr
	if o.implicitTLS {
		u.addr = u.TLSAddr
	}
	return u
}

// attempts returns the authentication attempts so far.
func (u *testUpstream) attempts() []string { return u.AuthAttempts() }

// secServer is a popbridge for the security tests.
type secServer struct {
	t       *testing.T
	srv     *Server
	addr    string // server.listen
	tlsAddr string // server.listen_tls, when set
	logs    *observer.ObservedLogs
	raw     *logBuffer // every line at Debug, JSON
}

// secConfig is the configuration of a secServer in front of upstream
// address up (cleartext): cleartext POP3 allowed, no limits except
// those the test sets.
func secConfig(up string) Config {
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Upstream.Address = up
	cfg.Upstream.Security = upstream.SecurityNone
	cfg.Upstream.Timeout = 10 * time.Second
	cfg.Auth.AllowInsecureAuth = true
	cfg.Limits = LimitsConfig{LoginFailureWindow: time.Hour}
	return cfg
}

// startSec starts popbridge with cfg; the logs go to the test log, to an
// observer and to a JSON buffer, all at Debug level. tune runs before the
// server accepts anything.
func startSec(t *testing.T, cfg Config, tune ...func(*Server)) *secServer {
	t.Helper()
	return secOver(startBridge(t, nil, withBaseConfig(cfg), withObserver(), withJSONLog(), withTune(tune...)))
}

// startSecStore is startSec on the store st, which it closes at the end.
func startSecStore(t *testing.T, cfg Config, st state.Store, tune ...func(*Server)) *secServer {
	t.Helper()
	return secOver(startBridge(t, nil, withBaseConfig(cfg), withStore(st, false), withObserver(), withJSONLog(), withTune(tune...)))
}

func secOver(e *env) *secServer {
	return &secServer{t: e.t, srv: e.srv, addr: e.addr, tlsAddr: e.tlsAddr, logs: e.logs, raw: e.raw}
}

// dialFrom connects to addr from the local address local ("127.0.0.2":
// any address of 127.0.0.0/8 works on Linux) and reads the greeting.
func dialFrom(t testing.TB, local, addr string) *popConn {
	t.Helper()
	return dialPOPFrom(t, local, addr)
}

// dialRaw connects to addr from local without reading anything.
func dialRaw(t testing.TB, local, addr string) *popConn {
	t.Helper()
	c, err := popclient.Connect(addr, popclient.Options{Local: local, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, local, err)
	}
	t.Cleanup(func() { c.Close() })
	return wrapPOP(t, c)
}

// closed reports whether the server closed c (reading nothing more).
func (c *popConn) closed() bool {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.r.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// sessionLines returns the fields of the "session" log lines so far.
func (s *secServer) sessionLines() []map[string]any {
	var out []map[string]any
	for _, e := range s.logs.FilterMessage("session").All() {
		out = append(out, e.ContextMap())
	}
	return out
}

// waitSessions waits until n session lines have been logged.
func (s *secServer) waitSessions(n int) []map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := s.sessionLines()
		if len(lines) >= n || time.Now().After(deadline) {
			return lines
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func netipAddrPort(t testing.TB, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
