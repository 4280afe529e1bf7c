package imaptest

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/saslmech"
)

// Logins by password and by token on one MemServer, a certificate of the
// test's own, and the record of every authentication attempt.

// TokenMechanisms are the mechanisms WithTokens offers by default.
var TokenMechanisms = []string{sasl.Plain, saslmech.XOAuth2, saslmech.OAuthBearer}

// WithTokens lets clients log in with the password (LOGIN, and AUTHENTICATE
// PLAIN when offered) or with a token that check accepts (AUTHENTICATE
// XOAUTH2 or OAUTHBEARER when offered, for the account's user name, with
// the mechanism's error challenge before a refusal). mechs are the SASL
// mechanisms offered (AUTH=); none: TokenMechanisms. Unlike WithOAuth,
// passwords still work.
func WithTokens(check BearerCheck, mechs ...string) Option {
	if len(mechs) == 0 {
		mechs = TokenMechanisms
	}
	return func(c *memConfig) { c.tokens, c.mechs = check, slices.Clone(mechs) }
}

// WithCertificate is WithTLS with the test's own certificate instead of a
// generated one: STARTTLS on Addr, implicit TLS on TLSAddr. ClientTLS
// trusts cert.Leaf when it is set.
func WithCertificate(cert tls.Certificate) Option {
	return func(c *memConfig) { c.tls, c.cert = true, &cert }
}

// certConfigs returns the server and client configurations of cert.
func certConfigs(cert *tls.Certificate) (server, client *tls.Config) {
	server = &tls.Config{Certificates: []tls.Certificate{*cert}}
	client = &tls.Config{}
	if cert.Leaf != nil {
		client.RootCAs = x509.NewCertPool()
		client.RootCAs.AddCert(cert.Leaf)
	}
	return server, client
}

// AuthAttempts returns the authentication attempts of clients (not the
// helper's) so far, in order: the command or mechanism, the user name
// and "ok" or "refused", as "LOGIN alice ok" or "XOAUTH2 alice refused".
func (s *MemServer) AuthAttempts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.auths)
}

// recordAuth records an authentication attempt of a client.
func (sess *session) recordAuth(mech, user string, err error) {
	if sess.s.isInternal(sess.addr) {
		return
	}
	result := "ok"
	if err != nil {
		result = "refused"
	}
	sess.s.mu.Lock()
	sess.s.auths = append(sess.s.auths, mech+" "+user+" "+result)
	sess.s.mu.Unlock()
}

// tokenSession is the session of a MemServer WithTokens.
type tokenSession struct{ *session }

var _ imapserver.SessionSASL = (*tokenSession)(nil)

func (sess *tokenSession) AuthenticateMechanisms() []string { return sess.s.mechs }

func (sess *tokenSession) Authenticate(mech string) (sasl.Server, error) {
	if err := sess.fault("LOGIN"); err != nil {
		return nil, err
	}
	mech = strings.ToUpper(mech)
	if !slices.Contains(sess.s.mechs, mech) {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "SASL mechanism not offered"}
	}
	if mech == sasl.Plain {
		return sasl.NewPlainServer(func(_, user, pass string) error {
			return sess.login(sasl.Plain, user, pass)
		}), nil
	}
	s := sess.s
	return OAuthMechanism(mech, func(user, token string) error {
		err := error(ErrOAuthRefused)
		if strings.EqualFold(user, s.User) {
			err = s.tokens(user, token)
		}
		sess.recordAuth(mech, user, err)
		if err != nil {
			return err
		}
		sess.UserSession = imapmemserver.NewUserSession(s.user)
		return nil
	})
}
