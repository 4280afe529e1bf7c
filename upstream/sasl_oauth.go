package upstream

import (
	"errors"
	"strconv"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/saslmech"
)

// OAuthClient is a go-sasl client for a bearer-token mechanism. On
// failure the server sends an error challenge (JSON); the client answers
// it with the dummy response the mechanism prescribes, so the server ends
// the exchange with a plain NO and the connection stays in step, and
// keeps the challenge for Failure.
type OAuthClient struct {
	mech    string
	ir      []byte
	failure []byte
}

var _ sasl.Client = (*OAuthClient)(nil)

// NewXOAuth2Client returns a client for XOAUTH2
// (https://developers.google.com/gmail/imap/xoauth2-protocol): it sends
// "user=" username ^A "auth=Bearer " token ^A ^A, and answers an error
// challenge with an empty response.
func NewXOAuth2Client(username, token string) *OAuthClient {
	return &OAuthClient{
		mech: saslmech.XOAuth2,
		ir:   []byte("user=" + username + "\x01auth=Bearer " + token + "\x01\x01"),
	}
}

// NewOAuthBearerClient returns a client for OAUTHBEARER (RFC 7628): it
// sends the GS2 header with username as the authorization identity
// (escaped as RFC 5801 says), host and port when given, and the token,
// and answers an error challenge with ^A (§3.2.3).
func NewOAuthBearerClient(username, token, host string, port int) *OAuthClient {
	var b strings.Builder
	b.WriteString("n,")
	if username != "" {
		b.WriteString("a=")
		b.WriteString(strings.NewReplacer("=", "=3D", ",", "=2C").Replace(username))
	}
	b.WriteString(",")
	if host != "" {
		b.WriteString("\x01host=" + host)
	}
	if port > 0 {
		b.WriteString("\x01port=" + strconv.Itoa(port))
	}
	b.WriteString("\x01auth=Bearer " + token + "\x01\x01")
	return &OAuthClient{mech: saslmech.OAuthBearer, ir: []byte(b.String())}
}

// Start implements sasl.Client: it returns the whole credential as the
// initial response.
func (c *OAuthClient) Start() (mech string, ir []byte, err error) {
	return c.mech, c.ir, nil
}

// errOAuthChallenge ends an exchange whose server sent more than one
// challenge: it does not follow the mechanism.
var errOAuthChallenge = errors.New("upstream: unexpected second SASL challenge")

// Next implements sasl.Client. The mechanism has a single message (the
// server's empty request for it, when it came without SASL-IR, is answered
// by imapclient with the initial response), so a challenge is the error
// report: it is kept and answered with the dummy response. A second
// challenge is an error.
func (c *OAuthClient) Next(challenge []byte) ([]byte, error) {
	if c.failure != nil {
		return nil, errOAuthChallenge
	}
	c.failure = append([]byte{}, challenge...)
	if c.mech == saslmech.OAuthBearer {
		return []byte{0x01}, nil
	}
	return []byte{}, nil
}

// Failure returns the error challenge the server sent (JSON, such as
// {"status":"invalid_token"}), or nil. It holds no secret.
func (c *OAuthClient) Failure() []byte { return c.failure }
