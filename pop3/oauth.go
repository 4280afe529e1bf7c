package pop3

import (
	"bytes"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/saslmech"
)

// Error challenges sent when the Backend refuses a token: RFC 7628 §3.2.2
// for OAUTHBEARER, and the JSON Google and Microsoft send for XOAUTH2.
// They say only that the token was refused.
var (
	oauthBearerFailure = []byte(`{"status":"invalid_token","schemes":"bearer"}`)
	xoauth2Failure     = []byte(`{"status":"401","schemes":"bearer"}`)
)

// errBadBearer rejects a malformed XOAUTH2 or OAUTHBEARER response. Its
// text never holds the response.
var errBadBearer = errors.New("pop3: malformed bearer token response")

// bearerServer is the server side of XOAUTH2 and OAUTHBEARER: it asks for
// the client's response with an empty challenge unless the initial
// response holds it, and parses out the user and the token. The Backend
// checks the token afterwards (TokenBackend.LoginToken).
type bearerServer struct {
	parse   func([]byte) (user, token string, err error)
	failure []byte // the error challenge for a refused token
	done    bool
	user    string
	token   string
}

func newBearerServer(mech string) *bearerServer {
	if mech == saslmech.XOAuth2 {
		return &bearerServer{parse: parseXOAuth2, failure: xoauth2Failure}
	}
	return &bearerServer{parse: parseOAuthBearer, failure: oauthBearerFailure}
}

// Next implements sasl.Server.
func (s *bearerServer) Next(resp []byte) ([]byte, bool, error) {
	if s.done {
		return nil, false, sasl.ErrUnexpectedClientResponse
	}
	if resp == nil {
		return []byte{}, false, nil
	}
	s.done = true
	user, token, err := s.parse(resp)
	if err != nil {
		return nil, false, err
	}
	s.user, s.token = user, token
	return nil, true, nil
}

// parseXOAuth2 parses an XOAUTH2 client response:
//
//	"user=" user ^A "auth=Bearer " token ^A ^A
//
// (https://developers.google.com/gmail/imap/xoauth2-protocol). Other
// key=value pairs are ignored; user and auth must each appear once.
func parseXOAuth2(b []byte) (user, token string, err error) {
	pairs, ok := bytes.CutSuffix(b, []byte("\x01\x01"))
	if !ok {
		return "", "", errBadBearer
	}
	var haveUser, haveAuth bool
	for _, kv := range bytes.Split(pairs, []byte{1}) {
		key, value, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			return "", "", errBadBearer
		}
		switch string(key) {
		case "user":
			if haveUser {
				return "", "", errBadBearer
			}
			haveUser, user = true, string(value)
		case "auth":
			if haveAuth {
				return "", "", errBadBearer
			}
			haveAuth = true
			if token, ok = bearerToken(value); !ok {
				return "", "", errBadBearer
			}
		}
	}
	if !haveUser || !haveAuth || user == "" {
		return "", "", errBadBearer
	}
	return user, token, nil
}

// parseOAuthBearer parses an OAUTHBEARER client response (RFC 7628 §3.1):
//
//	gs2-header ^A *(key "=" value ^A) ^A
//
// where gs2-header is "n,a=" authzid "," (or "y,..."; channel binding,
// "p=...", is refused). The authorization identity names the user: it is
// required here, since the upstream needs the account name. Pairs other
// than auth (host, port, ...) are ignored.
func parseOAuthBearer(b []byte) (user, token string, err error) {
	cbflag, rest, ok := bytes.Cut(b, []byte(","))
	if !ok || !(string(cbflag) == "n" || string(cbflag) == "y") {
		return "", "", errBadBearer
	}
	authzid, rest, ok := bytes.Cut(rest, []byte(","))
	if !ok {
		return "", "", errBadBearer
	}
	name, ok := bytes.CutPrefix(authzid, []byte("a="))
	if !ok {
		return "", "", errBadBearer
	}
	if user, ok = decodeSASLName(string(name)); !ok || user == "" {
		return "", "", errBadBearer
	}
	rest, ok = bytes.CutPrefix(rest, []byte{1})
	if !ok {
		return "", "", errBadBearer
	}
	pairs, ok := bytes.CutSuffix(rest, []byte("\x01\x01"))
	if !ok {
		return "", "", errBadBearer
	}
	haveAuth := false
	for _, kv := range bytes.Split(pairs, []byte{1}) {
		key, value, ok := bytes.Cut(kv, []byte("="))
		if !ok || !validKey(key) {
			return "", "", errBadBearer
		}
		if string(key) != "auth" {
			continue
		}
		if haveAuth {
			return "", "", errBadBearer
		}
		haveAuth = true
		if token, ok = bearerToken(value); !ok {
			return "", "", errBadBearer
		}
	}
	if !haveAuth {
		return "", "", errBadBearer
	}
	return user, token, nil
}

// bearerToken returns the token of an "auth" value: "Bearer" (in any case),
// one space, then a b64token (RFC 6750 §2.1).
func bearerToken(value []byte) (string, bool) {
	scheme, token, ok := bytes.Cut(value, []byte(" "))
	if !ok || !strings.EqualFold(string(scheme), "bearer") || !validB64Token(token) {
		return "", false
	}
	return string(token), true
}

// validB64Token reports whether t is a b64token:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func validB64Token(t []byte) bool {
	i := 0
	for i < len(t) {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			break
		}
		i++
	}
	if i == 0 {
		return false
	}
	for ; i < len(t); i++ {
		if t[i] != '=' {
			return false
		}
	}
	return true
}

// validKey reports whether k is an RFC 7628 key: 1*ALPHA.
func validKey(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// decodeSASLName undoes the escaping of an RFC 5801 saslname: "=2C" is
// ",", "=3D" is "=", and no other "=" may appear.
func decodeSASLName(s string) (string, bool) {
	if !strings.Contains(s, "=") {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '=' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case strings.HasPrefix(s[i:], "=2C"):
			b.WriteByte(',')
		case strings.HasPrefix(s[i:], "=3D"):
			b.WriteByte('=')
		default:
			return "", false
		}
		i += 2
	}
	return b.String(), true
}
