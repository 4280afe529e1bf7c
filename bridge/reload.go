package bridge

import (
	"crypto/x509"
	"errors"
	"fmt"
)

// ReloadTLS reads the [tls] certificate and key files again (on SIGHUP) and
// returns the new certificate. Connections from then on get it; sessions
// already running keep theirs. On any error (a missing file, a key that
// does not match) the certificate in use stays. Without [tls] it is an
// error.
func (s *Server) ReloadTLS() (*x509.Certificate, error) {
	if s.cert == nil {
		return nil, errors.New("no [tls] certificate configured")
	}
	leaf, err := s.cert.Reload()
	if err != nil {
		return nil, fmt.Errorf("reloading the TLS certificate (keeping the current one): %w", err)
	}
	return leaf, nil
}
