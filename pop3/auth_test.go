package pop3_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/pop3"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuthPlain(t *testing.T) {
	loggedIn := ok(maildropLine(defaultMsgs()))
	for name, steps := range map[string][]step{
		"initial response": {
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), loggedIn},
		},
		"continuation": {
			{"AUTH PLAIN", ok("+ ")},
			{b64("\x00" + testUser + "\x00" + testPass), loggedIn},
		},
		"identity and lower case": {
			{"auth plain " + b64(testUser+"\x00"+testUser+"\x00"+testPass), loggedIn},
		},
		"errors": {
			{"AUTH", ok("+OK mechanisms follow", "PLAIN", "LOGIN", ".")},
			{"AUTH PLAIN", ok("+ ")},
			{"*", ok("-ERR authentication cancelled")},
			{"AUTH PLAIN", ok("+ ")},
			{"!!!", ok("-ERR invalid base64 in SASL response")},
			{"AUTH PLAIN =", ok("-ERR malformed SASL response")},
			{"AUTH PLAIN !!!", ok("-ERR invalid base64 in initial response")},
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00wrong"), ok("-ERR [AUTH] authentication failed")},
			{"AUTH PLAIN " + b64("bob\x00"+testUser+"\x00"+testPass), ok("-ERR [AUTH] authorization identity not supported")},
			{"AUTH CRAM-MD5", ok("-ERR unsupported authentication mechanism")},
			{"AUTH PLAIN a b", ok("-ERR syntax error: AUTH mechanism [initial-response]")},
			{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), loggedIn},
		},
	} {
		t.Run(name, func(t *testing.T) {
			be := newFakeBackend()
			c := pipeSession(t, newServer(t, be, manyErrors), nil)
			c.expect("greeting", "+OK POP3 server ready")
			c.run(steps)
			c.run([]step{{"STAT", ok("+OK 3 " + itoa(len(msg1)+len(msg2)+len(msg3)))}})
		})
	}
}

func TestAuthLogin(t *testing.T) {
	loggedIn := ok(maildropLine(defaultMsgs()))
	user, pass := ok("+ "+b64("Username:")), ok("+ "+b64("Password:"))
	for name, steps := range map[string][]step{
		"continuations": {
			{"AUTH LOGIN", user},
			{b64(testUser), pass},
			{b64(testPass), loggedIn},
		},
		"initial response": {
			{"AUTH LOGIN " + b64(testUser), pass},
			{b64(testPass), loggedIn},
		},
		"cancel and retry": {
			{"AUTH LOGIN", user},
			{b64(testUser), pass},
			{"*", ok("-ERR authentication cancelled")},
			{"AUTH LOGIN =", pass},
			{b64(testPass), ok("-ERR [AUTH] invalid user name: empty")},
			{"AUTH LOGIN " + b64(testUser), pass},
			{b64(testPass), loggedIn},
		},
	} {
		t.Run(name, func(t *testing.T) {
			be := newFakeBackend()
			c := pipeSession(t, newServer(t, be), nil)
			c.expect("greeting", "+OK POP3 server ready")
			c.run(steps)
			c.run([]step{{"NOOP", ok("+OK")}})
		})
	}
}

func TestSASLLongLine(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be), nil)
	c.expect("greeting", "+OK POP3 server ready")
	long := b64("\x00" + testUser + "\x00" + strings.Repeat("p", 9000))
	c.run([]step{
		{"AUTH PLAIN", ok("+ ")},
		{long, ok("-ERR [AUTH] authentication failed")}, // 12 KiB is fine
		{"AUTH PLAIN", ok("+ ")},
		{b64(string(make([]byte, 13000))), ok("-ERR line too long")}, // over 16 KiB
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok(maildropLine(defaultMsgs()))},
	})
}

func TestCleartextRefused(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be, func(s *pop3.Server) { s.AllowInsecureAuth = false }), nil)
	refused := ok("-ERR [AUTH] plaintext authentication disallowed")
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"CAPA", ok("+OK capability list follows", "TOP", "RESP-CODES", "AUTH-RESP-CODE",
			"PIPELINING", "UIDL", "IMPLEMENTATION popbridge", ".")},
		{"USER " + testUser, refused},
		{"PASS " + testPass, refused},
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), refused},
		{"AUTH", refused},
		{"STLS", ok("-ERR unknown command")},
		{"STAT", ok("-ERR command not valid in this state")},
	})
	if len(be.logins) != 0 {
		t.Errorf("Login called: %v", be.logins)
	}
}

// testCert returns a self-signed certificate for "localhost" and a pool
// that trusts it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
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
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// startTLS runs the client side of the handshake after "+OK" to STLS.
func (c *client) startTLS(pool *x509.CertPool) {
	c.t.Helper()
	if n := c.r.Buffered(); n != 0 {
		c.t.Fatalf("%d octets after the STLS answer", n)
	}
	tc := tls.Client(c.nc, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.nc, c.r = tc, bufio.NewReader(tc)
}

func TestSTLS(t *testing.T) {
	cert, pool := testCert(t)
	be := newFakeBackend()
	srv := newServer(t, be, func(s *pop3.Server) {
		s.AllowInsecureAuth = false
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"CAPA", ok("+OK capability list follows", "TOP", "RESP-CODES", "AUTH-RESP-CODE",
			"PIPELINING", "UIDL", "STLS", "IMPLEMENTATION popbridge", ".")},
		{"USER " + testUser, ok("-ERR [AUTH] plaintext authentication disallowed, use STLS")},
		{"STLS x", ok("-ERR syntax error: STLS takes no arguments")},
	})
	// Injected commands after STLS, in the same packet, must be dropped.
	c.send("STLS\r\nCAPA\r\nUSER " + testUser + "\r\n")
	c.expect("STLS", "+OK begin TLS negotiation")
	c.startTLS(pool)
	c.run([]step{
		{"PASS " + testPass, ok("-ERR USER first")},
		{"CAPA", capaAuth},
		{"STLS", ok("-ERR TLS already active")},
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(defaultMsgs()))},
		{"STLS", ok("-ERR command not valid in this state")},
		{"CAPA", capaTrans},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.expectClosed()
	c.wait()
	if len(be.tls) != 1 || !be.tls[0] {
		t.Errorf("ConnInfo.TLS at Login: %v", be.tls)
	}
}

func TestSTLSForgetsUser(t *testing.T) {
	cert, pool := testCert(t)
	be := newFakeBackend()
	srv := newServer(t, be, func(s *pop3.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"STLS", ok("+OK begin TLS negotiation")},
	})
	c.startTLS(pool)
	c.run([]step{
		{"PASS " + testPass, ok("-ERR USER first")},
	})
}

func TestImplicitTLS(t *testing.T) {
	cert, pool := testCert(t)
	be := newFakeBackend()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	srv := newServer(t, be, func(s *pop3.Server) {
		s.AllowInsecureAuth = false
		s.TLSConfig = cfg
	})
	c := pipeSession(t, srv, func(nc net.Conn) net.Conn { return tls.Server(nc, cfg) })
	c.startTLS(pool)
	c.login()
	c.run([]step{{"QUIT", ok("+OK POP3 server signing off")}})
	c.expectClosed()
	c.wait()
	if len(be.tls) != 1 || !be.tls[0] {
		t.Errorf("ConnInfo.TLS at Login: %v", be.tls)
	}
}

func TestSTLSHandshakeFailure(t *testing.T) {
	cert, _ := testCert(t)
	be := newFakeBackend()
	srv := newServer(t, be, func(s *pop3.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{{"STLS", ok("+OK begin TLS negotiation")}})
	go io.WriteString(c.nc, "CAPA\r\n") // not a ClientHello
	c.rest()
	c.wait()
}
