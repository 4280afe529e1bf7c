package bridge

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/saslmech"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/upstream"
)

var _ pop3.TokenBackend = (*Bridge)(nil)

// TokenMechanisms implements pop3.TokenBackend: the mechanisms of
// auth.oauth_mechanisms.
func (b *Bridge) TokenMechanisms() []string { return b.cfg.Auth.OAuthMechanisms }

// LoginToken implements pop3.TokenBackend: an OAuth 2.0 bearer token from
// the POP3 client is passed through to the upstream with AUTHENTICATE, as
// the same mechanism when the upstream offers it (AUTH=XOAUTH2,
// AUTH=OAUTHBEARER), else as the other one (the token is the same). The
// rest is Login's: device tag, lock, sync.
func (b *Bridge) LoginToken(ctx context.Context, ci *pop3.ConnInfo, mech, username, token string) (pop3.Maildrop, error) {
	if !slices.Contains(b.cfg.Auth.OAuthMechanisms, mech) || token == "" {
		return nil, pop3.ErrAuthFailed
	}
	return b.loginWith(ctx, ci, username, func(ctx context.Context, log *zap.Logger, account string) (target, error) {
		if b.enrolledName(ctx, account) {
			// An enrolled account logs in with an app password only: a
			// token of the client's own is not popbridge's to check.
			log.Info("token login refused: the account is enrolled (log in with an app password)")
			return target{}, pop3.ErrAuthFailed
		}
		return b.passthroughTarget(account, func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error) {
			return b.openUpstreamToken(ctx, mech, account, token)
		})
	})
}

// openUpstreamToken dials the upstream, authenticates as account with the
// bearer token and selects the configured mailbox.
func (b *Bridge) openUpstreamToken(ctx context.Context, mech, account, token string) (*upstream.Conn, upstream.Status, error) {
	conn, err := upstream.Dial(ctx, b.dialFor(account))
	if err != nil {
		return nil, upstream.Status{}, err
	}
	fail := func(err error) (*upstream.Conn, upstream.Status, error) {
		conn.Close()
		return nil, upstream.Status{}, err
	}
	caps := conn.Caps()
	use := mech
	if !caps.Has(imap.AuthCap(mech)) {
		other := saslmech.XOAuth2
		if mech == saslmech.XOAuth2 {
			other = saslmech.OAuthBearer
		}
		if !caps.Has(imap.AuthCap(other)) {
			return fail(&upstream.Error{Kind: upstream.KindPerm, Op: "authenticate",
				Err: fmt.Errorf("the upstream offers neither AUTH=%s nor AUTH=%s", mech, other)})
		}
		use = other
	}
	var sc *upstream.OAuthClient
	if use == saslmech.XOAuth2 {
		sc = upstream.NewXOAuth2Client(account, token)
	} else {
		host, portStr, _ := net.SplitHostPort(b.cfg.Upstream.Address)
		port, _ := strconv.Atoi(portStr)
		sc = upstream.NewOAuthBearerClient(account, token, host, port)
	}
	if err := conn.Authenticate(ctx, sc); err != nil {
		if f := sc.Failure(); f != nil {
			err = fmt.Errorf("%w (server said %.200q)", err, f)
		}
		return fail(err)
	}
	b.log.Debug("upstream token login", zap.String("account", account), zap.String("mechanism", use))
	st, err := conn.Select(ctx, b.cfg.Upstream.Mailbox)
	if err != nil {
		return fail(err)
	}
	return conn, st, nil
}
