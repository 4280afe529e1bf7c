// Package saslmech names the SASL mechanisms popbridge speaks, on the POP3
// side (AUTH, RFC 5034) and toward the upstream (AUTHENTICATE), so that
// each name is written once. PLAIN, LOGIN and OAUTHBEARER are go-sasl's own
// constants; go-sasl has no XOAUTH2.
package saslmech

import "github.com/emersion/go-sasl"

const (
	// Plain is RFC 4616's PLAIN.
	Plain = sasl.Plain
	// Login is the LOGIN mechanism (draft-murchison-sasl-login).
	Login = sasl.Login
	// XOAuth2 is Google's and Microsoft's XOAUTH2:
	// "user=" user ^A "auth=Bearer " token ^A ^A.
	XOAuth2 = "XOAUTH2"
	// OAuthBearer is RFC 7628's OAUTHBEARER: a GS2 header with the
	// authorization identity ("n,a=user,"), then key=value pairs separated
	// by ^A, among them "auth=Bearer " token.
	OAuthBearer = sasl.OAuthBearer
)

// IsToken reports whether mech carries an OAuth 2.0 bearer token.
func IsToken(mech string) bool { return mech == XOAuth2 || mech == OAuthBearer }
