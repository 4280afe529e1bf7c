package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
)

// certificate is the POP3 server's certificate, read from the [tls] files
// and replaced by reload. Each TLS handshake takes the current one, so a
// new certificate applies to new connections (and STLS) while sessions
// already running keep theirs.
type certificate struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// loadCertificate reads the certificate and key of c.
func loadCertificate(c TLSConfig) (*certificate, error) {
	cert := &certificate{certFile: c.CertFile, keyFile: c.KeyFile}
	if _, err := cert.reload(); err != nil {
		return nil, fmt.Errorf("config: tls: %w", err)
	}
	return cert, nil
}

// reload reads the files again. On success the new certificate is used
// from the next handshake on, and its leaf is returned; on failure the
// current one stays.
func (c *certificate) reload() (*x509.Certificate, error) {
	kp, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, err
	}
	if kp.Leaf == nil {
		if kp.Leaf, err = x509.ParseCertificate(kp.Certificate[0]); err != nil {
			return nil, err
		}
	}
	c.cur.Store(&kp)
	return kp.Leaf, nil
}

// get is the tls.Config's GetCertificate.
func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if kp := c.cur.Load(); kp != nil {
		return kp, nil
	}
	return nil, errors.New("no certificate loaded")
}

// serverTLS returns the TLS configuration toward POP3 clients: TLS 1.2 at
// least (RFC 8314 §4.1 wants 1.2 or later), the current certificate.
func (c *certificate) serverTLS() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.get}
}

// ReloadTLS reads the [tls] certificate and key files again (on SIGHUP) and
// returns the new certificate. Connections from then on get it; sessions
// already running keep theirs. On any error (a missing file, a key that
// does not match) the certificate in use stays. Without [tls] it is an
// error.
func (s *Server) ReloadTLS() (*x509.Certificate, error) {
	if s.cert == nil {
		return nil, errors.New("no [tls] certificate configured")
	}
	leaf, err := s.cert.reload()
	if err != nil {
		return nil, fmt.Errorf("reloading the TLS certificate (keeping the current one): %w", err)
	}
	return leaf, nil
}
