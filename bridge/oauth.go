package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge/pop3"
	"github.com/popbridge/popbridge/bridge/upstream"
	"github.com/popbridge/popbridge/state"
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
	return b.loginWith(ctx, ci, username, func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error) {
		return b.openUpstreamToken(ctx, mech, account, token)
	})
}

// upstreamOpener logs in to the upstream as account and selects the
// mailbox.
type upstreamOpener func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error)

// loginWith is Login with the upstream authentication left to open: it
// splits the device tag, opens the upstream, takes the maildrop lock and
// opens the maildrop.
//
// TODO(lead): Login in backend.go is this with b.openUpstream(ctx,
// account, password); it can become a call to loginWith, and the maildrop
// can reconnect with the same opener (see the report of issue 3).
func (b *Bridge) loginWith(ctx context.Context, ci *pop3.ConnInfo, username string, open upstreamOpener) (pop3.Maildrop, error) {
	account, device := b.splitLogin(username)
	if account == "" {
		return nil, pop3.ErrAuthFailed
	}
	if !validDevice(device) {
		return nil, &pop3.Error{Code: pop3.CodeAuth, Text: "invalid device tag (letters, digits and ._-+=@ only, at most 64)"}
	}
	log := b.log.With(zap.String("session", ci.ID), zap.String("account", account), zap.String("device", device))
	conn, st, err := open(ctx, account)
	if err != nil {
		log.Info("upstream login failed", zap.Error(err))
		return nil, toPOP3(err)
	}
	key := state.ClientKey{Mailbox: b.mailboxKey(account), Client: device}
	release, err := b.store.Lock(ctx, key)
	if err != nil {
		conn.Close()
		if errors.Is(err, state.ErrLocked) {
			return nil, pop3.ErrInUse
		}
		return nil, &pop3.Error{Code: pop3.CodeSysTemp, Text: "state store unavailable, try again later", Err: err}
	}
	md := &maildrop{
		b: b, log: log, key: key, account: account,
		conn: conn, status: st, release: release, measured: map[string]int64{},
	}
	if err := md.open(ctx); err != nil {
		md.Close()
		log.Warn("opening the maildrop failed", zap.Error(err))
		return nil, toPOP3(err)
	}
	return md, nil
}

// openUpstreamToken dials the upstream, authenticates as account with the
// bearer token and selects the configured mailbox.
func (b *Bridge) openUpstreamToken(ctx context.Context, mech, account, token string) (*upstream.Conn, upstream.Status, error) {
	conn, err := upstream.Dial(ctx, b.up)
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
		other := upstream.MechXOAuth2
		if mech == upstream.MechXOAuth2 {
			other = upstream.MechOAuthBearer
		}
		if !caps.Has(imap.AuthCap(other)) {
			return fail(&upstream.Error{Kind: upstream.KindPerm, Op: "authenticate",
				Err: fmt.Errorf("the upstream offers neither AUTH=%s nor AUTH=%s", mech, other)})
		}
		use = other
	}
	var sc *upstream.OAuthClient
	if use == upstream.MechXOAuth2 {
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
