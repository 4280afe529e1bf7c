package oauth

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/saslmech"
	"github.com/popbridge/popbridge/upstream"
)

// IMAPLogin is how an enrolled account logs in to the IMAP service.
type IMAPLogin struct {
	// User is the mailbox: XOAUTH2's user=, OAUTHBEARER's authorization
	// identity. A shared mailbox is opened by naming it here with a token
	// of a user (or app) allowed to open it.
	User string
	// Mechanism is XOAUTH2 or OAUTHBEARER; when the server offers only
	// the other, the other is used (the token is the same).
	Mechanism string
	// Host and Port go into OAUTHBEARER's message when set.
	Host string
	Port int
}

// IMAPLogin returns the login of mailbox user with the configured
// mechanism and upstream address.
func (c *Client) IMAPLogin(user string) IMAPLogin {
	l := IMAPLogin{User: user, Mechanism: c.r.mechanism}
	if host, port, err := net.SplitHostPort(c.r.upAddress); err == nil {
		l.Host = host
		l.Port, _ = strconv.Atoi(port)
	}
	return l
}

// Authenticate logs conn in with a token from src. When the server
// refuses the token (upstream.KindAuth: NO [AUTHENTICATIONFAILED]), it
// asks src for another one once (ForceRefresh) and tries once more on the
// same connection. A token failure is returned as it is
// (errors.Is(err, ErrReconsent): the POP3 client gets -ERR [AUTH]); a
// refusal of the second token is the upstream's *upstream.Error.
func (l IMAPLogin) Authenticate(ctx context.Context, conn *upstream.Conn, src TokenSource) error {
	mech, err := l.mechanism(conn)
	if err != nil {
		return err
	}
	token, err := src.Fresh(ctx)
	if err != nil {
		return err
	}
	err = conn.Authenticate(ctx, l.saslClient(mech, token))
	if err == nil || upstream.KindOf(err) != upstream.KindAuth {
		return err
	}
	first := err
	token, err = src.ForceRefresh(ctx, token)
	if err != nil {
		return fmt.Errorf("%w (after the upstream refused the token: %v)", err, first)
	}
	return conn.Authenticate(ctx, l.saslClient(mech, token))
}

// mechanism picks the mechanism the server offers.
func (l IMAPLogin) mechanism(conn *upstream.Conn) (string, error) {
	want := l.Mechanism
	if want == "" {
		want = saslmech.XOAuth2
	}
	caps := conn.Caps()
	if caps.Has(imap.AuthCap(want)) {
		return want, nil
	}
	other := saslmech.XOAuth2
	if want == saslmech.XOAuth2 {
		other = saslmech.OAuthBearer
	}
	if caps.Has(imap.AuthCap(other)) {
		return other, nil
	}
	return "", &upstream.Error{Kind: upstream.KindPerm, Op: "authenticate",
		Err: fmt.Errorf("the upstream offers neither AUTH=%s nor AUTH=%s", want, other)}
}

func (l IMAPLogin) saslClient(mech, token string) *upstream.OAuthClient {
	if mech == saslmech.OAuthBearer {
		return upstream.NewOAuthBearerClient(l.User, token, l.Host, l.Port)
	}
	return upstream.NewXOAuth2Client(l.User, token)
}
