package imaptest

import (
	"bytes"
	"errors"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/saslmech"
)

// OAuth 2.0 on the server side: the SASL mechanisms of an OAuth-only
// upstream (Microsoft 365, Gmail) and the MemServer option that makes a
// MemServer one.

// BearerCheck decides an OAuth login: nil lets the client in as user (the
// mailbox it asked for), an error refuses it. An *imap.Error is sent to the
// client as it is; any other error becomes ErrOAuthRefused.
type BearerCheck func(user, token string) error

// TokenValidator says whom an access token belongs to and which
// mailboxes it may open (oauthtest.Provider implements it).
type TokenValidator interface {
	Validate(token string) (subject string, mailboxes []string, ok bool)
}

// ErrOAuthRefused is the answer to a refused token or to a password login
// on an OAuth-only server: NO [AUTHENTICATIONFAILED].
var ErrOAuthRefused = &imap.Error{
	Type: imap.StatusResponseTypeNo,
	Code: imap.ResponseCodeAuthenticationFailed,
	Text: "Authentication failed: invalid or expired token",
}

// ErrPasswordRefused answers LOGIN and AUTHENTICATE PLAIN on an OAuth-only
// server, as Exchange Online does once basic authentication is off.
var ErrPasswordRefused = &imap.Error{
	Type: imap.StatusResponseTypeNo,
	Code: imap.ResponseCodeAuthenticationFailed,
	Text: "Basic authentication is disabled: use OAuth (XOAUTH2 or OAUTHBEARER)",
}

// MailboxCheck returns a BearerCheck that lets a token in when v knows it
// and lists user among its mailboxes (compared case-insensitively).
func MailboxCheck(v TokenValidator) BearerCheck {
	return func(user, token string) error {
		_, boxes, ok := v.Validate(token)
		if !ok {
			return ErrOAuthRefused
		}
		for _, b := range boxes {
			if strings.EqualFold(b, user) {
				return nil
			}
		}
		return ErrOAuthRefused
	}
}

// WithOAuth makes the MemServer OAuth-only: LOGIN and AUTHENTICATE PLAIN
// from clients are refused with ErrPasswordRefused, and AUTHENTICATE
// XOAUTH2 and OAUTHBEARER log in to the account when v accepts the token
// for the account's user name (MailboxCheck). The MemServer's own helper
// connection (Admin, Messages ...) still logs in with the password.
func WithOAuth(v TokenValidator) Option {
	return func(c *memConfig) { c.oauth = MailboxCheck(v) }
}

// oauthFailure is the error challenge sent before a refusal, as Gmail and
// RFC 7628 §3.2.2 do.
var oauthFailure = []byte(`{"status":"invalid_token","schemes":"bearer"}`)

// bearerServer is the server side of XOAUTH2 and OAUTHBEARER: one client
// message; on refusal an error challenge, the client's dummy response,
// then the refusal.
type bearerServer struct {
	mech   string
	check  BearerCheck
	step   int
	failed error
}

// NewXOAuth2Server returns the server side of XOAUTH2: it reads
// "user=" user ^A "auth=Bearer " token ^A ^A and asks check.
func NewXOAuth2Server(check BearerCheck) sasl.Server {
	return &bearerServer{mech: saslmech.XOAuth2, check: check}
}

// NewOAuthBearerServer returns the server side of OAUTHBEARER (RFC 7628):
// it reads the GS2 header's authorization identity as the user and the
// auth= value as the token, and asks check.
func NewOAuthBearerServer(check BearerCheck) sasl.Server {
	return &bearerServer{mech: saslmech.OAuthBearer, check: check}
}

func (s *bearerServer) Next(response []byte) ([]byte, bool, error) {
	switch s.step {
	case 0:
		s.step = 1
		if response == nil {
			// No initial response: ask for it with an empty challenge.
			return []byte{}, false, nil
		}
		fallthrough
	case 1:
		s.step = 2
		var user, token string
		var err error
		if s.mech == saslmech.XOAuth2 {
			user, token, err = parseXOAuth2(response)
		} else {
			user, token, err = parseOAuthBearer(response)
		}
		if err != nil {
			return nil, true, &imap.Error{Type: imap.StatusResponseTypeBad, Text: s.mech + ": " + err.Error()}
		}
		if err := s.check(user, token); err != nil {
			var ie *imap.Error
			if !errors.As(err, &ie) {
				err = ErrOAuthRefused
			}
			s.failed = err
			return oauthFailure, false, nil
		}
		return nil, true, nil
	default:
		// The dummy response after the error challenge: empty for
		// XOAUTH2, ^A for OAUTHBEARER. Anything else still ends it.
		return nil, true, s.failed
	}
}

var errMalformed = errors.New("malformed client response")

// parseXOAuth2 splits "user=" U ^A "auth=Bearer " T ^A ^A.
func parseXOAuth2(b []byte) (user, token string, err error) {
	if !bytes.HasSuffix(b, []byte("\x01\x01")) {
		return "", "", errMalformed
	}
	fields := bytes.Split(bytes.TrimSuffix(b, []byte("\x01\x01")), []byte{1})
	for _, f := range fields {
		k, v, ok := bytes.Cut(f, []byte("="))
		if !ok {
			return "", "", errMalformed
		}
		switch string(k) {
		case "user":
			user = string(v)
		case "auth":
			token, ok = bearerValue(string(v))
			if !ok {
				return "", "", errors.New("auth is not a Bearer token")
			}
		}
	}
	if user == "" || token == "" {
		return "", "", errMalformed
	}
	return user, token, nil
}

// parseOAuthBearer splits the GS2 header "n,a=" U "," and the ^A-separated
// key=value pairs after it (RFC 7628 §3.1).
func parseOAuthBearer(b []byte) (user, token string, err error) {
	gs2, rest, ok := bytes.Cut(b, []byte{1})
	if !ok || !bytes.HasSuffix(rest, []byte("\x01")) {
		return "", "", errMalformed
	}
	parts := strings.SplitN(string(gs2), ",", 3)
	if len(parts) != 3 || parts[0] != "n" && parts[0] != "y" {
		return "", "", errMalformed
	}
	if a, ok := strings.CutPrefix(parts[1], "a="); ok {
		user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(a)
	}
	for _, f := range bytes.Split(bytes.TrimSuffix(rest, []byte("\x01")), []byte{1}) {
		if len(f) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(f, []byte("="))
		if !ok {
			return "", "", errMalformed
		}
		if string(k) == "auth" {
			token, ok = bearerValue(string(v))
			if !ok {
				return "", "", errors.New("auth is not a Bearer token")
			}
		}
	}
	if token == "" {
		return "", "", errMalformed
	}
	return user, token, nil
}

func bearerValue(v string) (string, bool) {
	const prefix = "bearer "
	if len(v) <= len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", false
	}
	return v[len(prefix):], true
}

// refuseServer reads one client message (asking for it when there was no
// initial response) and refuses it: PLAIN on an OAuth-only server.
type refuseServer struct {
	asked bool
	err   error
}

// NewRefusingServer returns a mechanism that reads the client's
// credentials and answers err.
func NewRefusingServer(err error) sasl.Server { return &refuseServer{err: err} }

func (s *refuseServer) Next(response []byte) ([]byte, bool, error) {
	if response == nil && !s.asked {
		s.asked = true
		return []byte{}, false, nil
	}
	return nil, true, s.err
}

// OAuthMechanisms are the mechanisms an OAuth-only server advertises:
// PLAIN (always refused, as Exchange Online advertises and refuses it),
// XOAUTH2 and OAUTHBEARER.
var OAuthMechanisms = []string{sasl.Plain, saslmech.XOAuth2, saslmech.OAuthBearer}

// OAuthMechanism returns the server side of mech for an OAuth-only server
// whose tokens check decides, or an error for an unknown mechanism.
func OAuthMechanism(mech string, check BearerCheck) (sasl.Server, error) {
	switch strings.ToUpper(mech) {
	case saslmech.XOAuth2:
		return NewXOAuth2Server(check), nil
	case saslmech.OAuthBearer:
		return NewOAuthBearerServer(check), nil
	case sasl.Plain:
		return NewRefusingServer(ErrPasswordRefused), nil
	}
	return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "SASL mechanism not supported"}
}

// oauthSession is the session of an OAuth-only MemServer (WithOAuth).
type oauthSession struct{ *session }

var _ imapserver.SessionSASL = (*oauthSession)(nil)

func (sess *oauthSession) AuthenticateMechanisms() []string { return OAuthMechanisms }

func (sess *oauthSession) Authenticate(mech string) (sasl.Server, error) {
	if err := sess.fault("LOGIN"); err != nil {
		return nil, err
	}
	s := sess.s
	return OAuthMechanism(mech, func(user, token string) error {
		if !strings.EqualFold(user, s.User) {
			return ErrOAuthRefused
		}
		if err := s.oauth(user, token); err != nil {
			return err
		}
		sess.UserSession = imapmemserver.NewUserSession(s.user)
		return nil
	})
}
