// Package tlsreload holds a server certificate that can be read again from
// its files while the server runs.
package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"sync/atomic"
)

// Certificate is a server certificate, read from its files and replaced by
// Reload. Each TLS handshake takes the current one, so a
// new certificate applies to new connections (and STLS) while sessions
// already running keep theirs.
type Certificate struct {
	mu                sync.Mutex // serializes reloads
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// Load reads the certificate (PEM chain) and its key.
func Load(certFile, keyFile string) (*Certificate, error) {
	cert := &Certificate{certFile: certFile, keyFile: keyFile}
	if _, err := cert.Reload(); err != nil {
		return nil, err
	}
	return cert, nil
}

// Reload reads the files again. On success the new certificate is used
// from the next handshake on, and its leaf is returned; on failure the
// current one stays.
func (c *Certificate) Reload() (*x509.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.load(c.certFile, c.keyFile)
}

// ReloadFiles is Reload from other files, which are read from then on.
// On failure the current certificate and files stay.
func (c *Certificate) ReloadFiles(certFile, keyFile string) (*x509.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	leaf, err := c.load(certFile, keyFile)
	if err == nil {
		c.certFile, c.keyFile = certFile, keyFile
	}
	return leaf, err
}

func (c *Certificate) load(certFile, keyFile string) (*x509.Certificate, error) {
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
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
func (c *Certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if kp := c.cur.Load(); kp != nil {
		return kp, nil
	}
	return nil, errors.New("no certificate loaded")
}

// ServerConfig returns a server TLS configuration: TLS 1.2 at
// least (RFC 8314 §4.1 wants 1.2 or later), the current certificate.
func (c *Certificate) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.get}
}
