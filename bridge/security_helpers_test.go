package bridge

// Helpers of the security tests: test certificates, an upstream
// IMAP server that checks OAuth tokens, and a popbridge whose every log
// line, at Debug level, is kept for inspection.

import (
	"bytes"
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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

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

// testUpstream is an in-process IMAP server (imapmemserver) with one
// account, secUser, that logs in with secPassword (LOGIN, AUTHENTICATE
// PLAIN) or with secToken (AUTHENTICATE XOAUTH2 or OAUTHBEARER). A refused
// token gets the mechanism's error challenge, then NO. It records each
// authentication attempt.
type testUpstream struct {
	addr  string
	user  *imapmemserver.User
	mechs []string

	mu    sync.Mutex
	auths []string // "LOGIN user", "XOAUTH2 user", "OAUTHBEARER user" ... with "ok" or "refused"
}

func startTestUpstream(t testing.TB, o upOpts) *testUpstream {
	t.Helper()
	if o.mechs == nil {
		o.mechs = []string{"PLAIN", "XOAUTH2", "OAUTHBEARER"}
	}
	u := &testUpstream{user: imapmemserver.NewUser(secUser, secPassword), mechs: o.mechs}
	for _, mb := range []string{"INBOX", "Trash"} {
		var opts *imap.CreateOptions
		if mb == "Trash" {
			opts = &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrTrash}}
		}
		if err := u.user.Create(mb, opts); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range secMessages {
		if _, err := u.user.Append("INBOX", bytes.NewReader(m), &imap.AppendOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	opts := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &tokenSession{up: u}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       zap.NewStdLog(zaptest.NewLogger(t).Named("test-upstream")),
	}
	var tc *tls.Config
	if o.cert != nil {
		tc = &tls.Config{Certificates: []tls.Certificate{o.cert.pair}}
		if !o.implicitTLS {
			opts.TLSConfig = tc
		}
	}
	srv := imapserver.New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	if o.implicitTLS {
		ln = tls.NewListener(ln, tc)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *testUpstream) record(s string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.auths = append(u.auths, s)
}

// attempts returns the authentication attempts so far.
func (u *testUpstream) attempts() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.auths...)
}

// tokenSession is imapmemserver's session with SASL mechanisms of its own.
type tokenSession struct {
	*imapmemserver.UserSession // nil until authenticated
	up                         *testUpstream
}

var _ imapserver.SessionSASL = (*tokenSession)(nil)

func (s *tokenSession) Login(username, password string) error {
	if username != secUser || password != secPassword {
		s.up.record("LOGIN " + username + " refused")
		return imapserver.ErrAuthFailed
	}
	s.up.record("LOGIN " + username + " ok")
	s.UserSession = imapmemserver.NewUserSession(s.up.user)
	return nil
}

func (s *tokenSession) Close() error {
	if s.UserSession == nil {
		return nil
	}
	return s.UserSession.Close()
}

func (s *tokenSession) AuthenticateMechanisms() []string { return s.up.mechs }

func (s *tokenSession) Authenticate(mech string) (sasl.Server, error) {
	known := false
	for _, m := range s.up.mechs {
		known = known || m == mech
	}
	if !known {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "mechanism not offered"}
	}
	if mech == "PLAIN" {
		return sasl.NewPlainServer(func(_, user, pass string) error { return s.Login(user, pass) }), nil
	}
	return &tokenSASL{s: s, mech: mech}, nil
}

// tokenSASL checks an XOAUTH2 or OAUTHBEARER response against secToken.
type tokenSASL struct {
	s      *tokenSession
	mech   string
	failed bool
}

var errTokenRefused = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "invalid token"}

func (a *tokenSASL) Next(resp []byte) ([]byte, bool, error) {
	if a.failed {
		// The client's dummy answer to the error challenge.
		return nil, true, errTokenRefused
	}
	if resp == nil {
		return []byte{}, false, nil
	}
	user, token := parseTestToken(a.mech, string(resp))
	if user != secUser || token != secToken {
		a.s.up.record(a.mech + " " + user + " refused")
		a.failed = true
		return []byte(`{"status":"invalid_token","schemes":"bearer"}`), false, nil
	}
	a.s.up.record(a.mech + " " + user + " ok")
	a.s.UserSession = imapmemserver.NewUserSession(a.s.up.user)
	return nil, true, nil
}

// parseTestToken reads the user and the token out of an XOAUTH2 or
// OAUTHBEARER client response, loosely.
func parseTestToken(mech, resp string) (user, token string) {
	if mech == "OAUTHBEARER" {
		gs2, rest, _ := strings.Cut(resp, "\x01")
		if f := strings.Split(gs2, ","); len(f) == 3 {
			user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(strings.TrimPrefix(f[1], "a="))
		}
		resp = rest
	}
	for _, kv := range strings.Split(resp, "\x01") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "user":
			user = v
		case "auth":
			token, _ = strings.CutPrefix(v, "Bearer ")
		}
	}
	return user, token
}

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
