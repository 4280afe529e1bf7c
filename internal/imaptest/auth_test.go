package imaptest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// A MemServer WithTokens takes the password and the right token, refuses
// a wrong token with NO [AUTHENTICATIONFAILED], offers only the mechanisms
// given, and records each attempt; WithCertificate serves the test's own
// certificate on the implicit-TLS address.
func TestMemServerWithTokens(t *testing.T) {
	const token = "tok-123"
	check := func(_, tok string) error {
		if tok != token {
			return imaptest.ErrOAuthRefused
		}
		return nil
	}
	s := imaptest.NewMemServer(t, imaptest.WithTokens(check, "XOAUTH2"))
	c, err := imapclient.DialInsecure(s.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if caps := c.Caps(); !caps.Has("AUTH=XOAUTH2") || caps.Has("AUTH=OAUTHBEARER") || caps.Has("AUTH=PLAIN") {
		t.Errorf("capabilities %v: want AUTH=XOAUTH2 alone", caps)
	}
	var ie *imap.Error
	if err := c.Authenticate(upstream.NewXOAuth2Client(s.User, "wrong")); !errors.As(err, &ie) || ie.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("XOAUTH2 with a wrong token: %v; want NO [AUTHENTICATIONFAILED]", err)
	}
	if err := c.Login(s.User, "wrong").Wait(); err == nil {
		t.Error("LOGIN with a wrong password succeeded")
	}
	if err := c.Authenticate(upstream.NewXOAuth2Client(s.User, token)); err != nil {
		t.Fatalf("XOAUTH2 with the token: %v", err)
	}
	want := []string{"XOAUTH2 " + s.User + " refused", "LOGIN " + s.User + " refused", "XOAUTH2 " + s.User + " ok"}
	if got := s.AuthAttempts(); !slices.Equal(got, want) {
		t.Errorf("AuthAttempts = %q, want %q", got, want)
	}

	pw := imaptest.NewMemServer(t, imaptest.WithTokens(check))
	c2, err := imapclient.DialInsecure(pw.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Login(pw.User, pw.Pass).Wait(); err != nil {
		t.Fatalf("LOGIN with the password: %v", err)
	}
	if got := pw.AuthAttempts(); !slices.Equal(got, []string{"LOGIN " + pw.User + " ok"}) {
		t.Errorf("AuthAttempts = %q", got)
	}

}

// WithCertificate serves the test's own certificate, with implicit TLS on
// TLSAddr and STARTTLS on Addr, and ClientTLS trusts it.
func TestMemServerWithCertificate(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(77),
		Subject:               pkix.Name{CommonName: "imap.example.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"imap.example.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s := imaptest.NewMemServer(t, imaptest.WithCertificate(tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}))
	cfg := s.ClientTLS.Clone()
	cfg.ServerName = "imap.example.test"
	conn, err := tls.Dial("tcp", s.TLSAddr, cfg)
	if err != nil {
		t.Fatalf("implicit TLS with the certificate trusted: %v", err)
	}
	if got := conn.ConnectionState().PeerCertificates[0]; !got.Equal(leaf) {
		t.Errorf("served certificate %v, want the test's own", got.Subject)
	}
	conn.Close()
	c, err := imapclient.DialStartTLS(s.Addr, &imapclient.Options{TLSConfig: cfg})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	if err := c.Login(s.User, s.Pass).Wait(); err != nil {
		t.Errorf("LOGIN after STARTTLS: %v", err)
	}
}
