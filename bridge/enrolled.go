package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge/account"
	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// Enrolled accounts: a POP3 login name in the account registry is served
// from its [[upstreams]] entry. The app password is checked here, with no
// upstream contact (a wrong one never reaches the upstream); the upstream
// login is XOAUTH2 or OAUTHBEARER with a token kept fresh by an
// oauth.Keeper over the account's grant, refreshed under the store's
// cross-instance grant lock.
//
// What is held in memory, and for how long: the account's data key (in an
// account.Session, which opens the grant) and its current access token (in
// the session's Keeper) for the POP3 session only: both are dropped when
// the maildrop is released. Between sessions popbridge holds nothing of an
// enrolled account but, for app-only accounts, the app token of each
// [[upstreams]] entry (not a user's grant; the client secret gets another
// at any time).

// oauthUpstream is a configured [[upstreams]] entry, ready to dial.
type oauthUpstream struct {
	cfg    resolvedUpstream
	prov   *providerState // the entry's profile, connection budgets and back-off
	dial   upstream.Config
	client *oauth.Client
	app    *oauth.AppKeeper // app-only token of client (client credentials)
}

// enrolledState is the bridge's side of enrolled accounts.
type enrolledState struct {
	reg       *account.Registry // nil: the store keeps no accounts
	upstreams map[string]*oauthUpstream
	// reconsent holds the accounts whose lost grant this process has
	// logged, so that it is logged once, not at every login.
	reconsent sync.Map
}

// AccountOptions are what NewBridgeWith adds to NewBridge.
type AccountOptions struct {
	// Registry, when set, replaces the registry NewBridge builds over the
	// store (tests: other argon2 parameters, a clock).
	Registry *account.Registry
	// Client, when set, adjusts each upstream's OAuth client before use
	// (tests: an HTTP client, a clock).
	Client func(upstreamName string, c *oauth.Client)
}

// newEnrolled builds the registry over st (when st keeps accounts) and
// the clients and provider states of the [[upstreams]] entries; it reads
// their client secrets and the server key.
func newEnrolled(cfg Config, st state.Store, log *zap.Logger, opts AccountOptions, now func() time.Time) (*enrolledState, error) {
	e := &enrolledState{upstreams: map[string]*oauthUpstream{}, reg: opts.Registry}
	if e.reg == nil {
		if as, ok := st.(state.AccountStore); ok {
			reg, err := NewRegistry(cfg, as, log)
			if err != nil {
				return nil, err
			}
			e.reg = reg
		}
	}
	for _, u := range cfg.Upstreams {
		r, _ := u.resolve()
		c, err := oauth.NewClient(r.OAuth)
		if err != nil {
			return nil, fmt.Errorf("config: upstreams %q: %w", u.Name, err)
		}
		if opts.Client != nil {
			opts.Client(u.Name, c)
		}
		dc, err := dialConfig(r.UpstreamConfig, log)
		if err != nil {
			return nil, fmt.Errorf("config: upstreams %q: %w", u.Name, err)
		}
		ou := &oauthUpstream{cfg: r, dial: dc, client: c, prov: newEntryState(r, log, now)}
		if c.Flow() == oauth.FlowClientCredentials {
			ou.app = oauth.NewAppKeeper(c)
		}
		e.upstreams[u.Name] = ou
	}
	return e, nil
}

// newEntryState is the provider state of the [[upstreams]] entry r.
func newEntryState(r resolvedUpstream, log *zap.Logger, now func() time.Time) *providerState {
	ps := newProviderState(r.UpstreamConfig, log, now)
	if r.PresetProfile {
		ps.how = "preset"
	}
	return ps
}

// NewRegistry opens the account registry of cfg over as, with the server
// key of accounts.server_key_file when set.
func NewRegistry(cfg Config, as state.AccountStore, log *zap.Logger) (*account.Registry, error) {
	var key []byte
	if f := cfg.Accounts.ServerKeyFile; f != "" {
		k, err := account.ReadServerKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("config: accounts.server_key_file: %w", err)
		}
		key = k
	}
	return account.New(as, &account.Options{ServerKey: key, Log: log.Named("accounts")})
}

// Registry returns the account registry, or nil when the store keeps no
// accounts.
func (b *Bridge) Registry() *account.Registry { return b.enrolled.reg }

// enrolledName reports whether account is enrolled (a store failure counts
// as enrolled: the login is refused rather than passed through).
func (b *Bridge) enrolledName(ctx context.Context, account string) bool {
	if b.enrolled.reg == nil {
		return false
	}
	_, err := b.enrolled.reg.Lookup(ctx, account)
	return !errors.Is(err, accountNotEnrolled)
}

var accountNotEnrolled = account.ErrNotEnrolled

// Refusals of enrolled logins.
var (
	errReconsent   = &pop3.Error{Code: pop3.CodeAuth, Text: "the upstream authorization of this account was revoked or has expired: the administrator must enroll it again"}
	errNoUpstream  = &pop3.Error{Code: pop3.CodeSysPerm, Text: "this account's upstream is not configured"}
	errOAuthClient = &pop3.Error{Code: pop3.CodeSysPerm, Text: "the upstream provider refused popbridge's OAuth client: the administrator must check its registration"}
)

// enrolledTarget resolves an enrolled account: ok false when account is
// not enrolled (pass-through decides). The app password is verified here;
// the Session it opens lives until the maildrop is released.
func (b *Bridge) enrolledTarget(ctx context.Context, log *zap.Logger, name, password string) (t target, ok bool, err error) {
	e := b.enrolled
	if e.reg == nil {
		return target{}, false, nil
	}
	info, err := e.reg.Lookup(ctx, name)
	if errors.Is(err, account.ErrNotEnrolled) {
		return target{}, false, nil
	}
	if err != nil {
		log.Warn("reading the account registry failed", zap.Error(err))
		return target{}, true, toPOP3(err)
	}
	up := e.upstreams[info.Upstream]
	if up == nil {
		log.Error("enrolled account refused: its upstream is not in [[upstreams]]", zap.String("upstream", info.Upstream))
		return target{}, true, errNoUpstream
	}
	sess, err := e.reg.Verify(ctx, name, password)
	if err != nil {
		if errors.Is(err, account.ErrBadPassword) {
			log.Info("wrong app password (the upstream was not contacted)")
			return target{}, true, pop3.ErrAuthFailed
		}
		log.Warn("checking the app password failed", zap.Error(err))
		return target{}, true, toPOP3(err)
	}
	t, err = b.enrolledOpen(log, info, up, sess)
	if err != nil {
		sess.Close()
		return target{}, true, err
	}
	return t, true, nil
}

// enrolledOpen is the target of the unlocked account sess (info, served
// from up): its opener logs in with a token of the account's grant (or,
// app-only, of the upstream's client) as the account's login user.
func (b *Bridge) enrolledOpen(log *zap.Logger, info *account.Info, up *oauthUpstream, sess *account.Session) (target, error) {
	e := b.enrolled
	var src oauth.TokenSource
	switch {
	case info.Kind == account.AppOnly && up.app != nil:
		src = up.app
	case info.Kind == account.AppOnly:
		log.Error("app-only account refused: its upstream's oauth.flow is not client_credentials", zap.String("upstream", info.Upstream))
		return target{}, errOAuthClient
	default:
		src = oauth.NewKeeper(up.client, &sessionGrants{s: sess, count: b.countRefresh})
	}
	user := info.LoginUser()
	login := up.client.IMAPLogin(user)
	if host, port, err := net.SplitHostPort(up.cfg.Address); err == nil {
		login.Host = host
		login.Port, _ = strconv.Atoi(port)
	}
	open := func(ctx context.Context, _ string) (*upstream.Conn, upstream.Status, error) {
		conn, st, err := b.openEnrolled(ctx, up, login, src)
		if err != nil {
			return nil, upstream.Status{}, b.enrolledError(log, sess.Name(), err)
		}
		e.reconsent.Delete(sess.Name())
		return conn, st, nil
	}
	return target{
		open:       open,
		mailboxKey: MailboxKey(up.cfg.Name, b.accountKey(user), up.cfg.Mailbox),
		done:       sess.Close,
		timeout:    up.cfg.Timeout,
		prov:       up.prov,
		acct:       b.accountKey(user),
		mailbox:    up.cfg.Mailbox,
		keyFor:     func(mb string) string { return MailboxKey(up.cfg.Name, b.accountKey(user), mb) },
		enrolled:   true,
	}, nil
}

// CheckAccount is "popbridge account test": it unlocks the enrolled
// account name with password (or, when password is empty, the server
// key), gets a fresh token (refreshing the grant when needed, as a login
// would), logs in upstream, selects the mailbox and writes what it saw to
// w: whether the token was refreshed, the upstream login, the number of
// messages.
func (b *Bridge) CheckAccount(ctx context.Context, name, password string, w io.Writer) error {
	reg := b.enrolled.reg
	if reg == nil {
		return errors.New("the state store keeps no enrolled accounts")
	}
	info, err := reg.Lookup(ctx, name)
	if err != nil {
		return err
	}
	up := b.enrolled.upstreams[info.Upstream]
	if up == nil {
		return fmt.Errorf("account %s: upstream %q is not in [[upstreams]]", info.Name, info.Upstream)
	}
	var sess *account.Session
	if password == "" {
		sess, err = reg.Unlock(ctx, name)
	} else {
		sess, err = reg.Verify(ctx, name, password)
	}
	if err != nil {
		return err
	}
	t, err := b.enrolledOpen(b.log, info, up, sess)
	if err != nil {
		sess.Close()
		return err
	}
	defer t.done()
	fmt.Fprintf(w, "account %s: unlocked (%s)\n", info.Name, map[bool]string{true: "server key", false: "app password"}[password == ""])
	var before *account.Grant
	if info.Kind != account.AppOnly {
		before, _ = sess.Grant(ctx) // nil: none yet, the login gets one
	}
	conn, st, err := t.open(ctx, name)
	if err != nil {
		return err
	}
	defer conn.Close()
	switch after, err := sess.Grant(ctx); {
	case info.Kind == account.AppOnly:
		fmt.Fprintln(w, "token: app-only (client credentials of the upstream)")
	case err != nil:
		return err
	case before == nil || after.AccessToken != before.AccessToken:
		fmt.Fprintf(w, "token: refreshed, expires %s\n", after.Expiry.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "token: still valid, expires %s\n", after.Expiry.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "upstream %s (%s): logged in as %s\n", up.cfg.Name, up.cfg.Address, info.LoginUser())
	fmt.Fprintf(w, "mailbox %s: %d messages\n", up.cfg.Mailbox, st.NumMessages)
	return b.checkProfile(ctx, w, up, conn)
}

// checkProfile writes, for "popbridge account test", the profile of the
// [[upstreams]] entry up (learned from conn when not configured), what
// the delete policy does there, and the entry's connection budget. It
// changes nothing upstream.
func (b *Bridge) checkProfile(ctx context.Context, w io.Writer, up *oauthUpstream, conn *upstream.Conn) error {
	p := up.prov.learn(conn, b.cfg.Delete.Policy)
	fmt.Fprintf(w, "profile: %s (%s)\n", p.Name, up.prov.how)
	switch b.cfg.Delete.Policy {
	case PolicyMove:
		if err := reportTrash(ctx, w, conn, b.cfg.Delete.MoveTo, p); err != nil {
			return err
		}
	case PolicyExpunge:
		if p.ExpungeArchives {
			fmt.Fprintf(w, "expunge: does NOT delete here: %s\n", p.ExpungeNote)
		}
	}
	if n := maxConnections(up.cfg.MaxConnectionsPerAccount, p); n > 0 {
		fmt.Fprintf(w, "connection budget: %d upstream connections per account\n", n)
	} else {
		fmt.Fprintf(w, "connection budget: no limit\n")
	}
	return nil
}

// openEnrolled dials up, logs in as login with a token of src (one forced
// refresh when the upstream refuses it) and selects the mailbox.
func (b *Bridge) openEnrolled(ctx context.Context, up *oauthUpstream, login oauth.IMAPLogin, src oauth.TokenSource) (*upstream.Conn, upstream.Status, error) {
	dc := up.dial
	dc.Observe = b.up.Observe
	if t := b.dialFor(login.User).Trace; t != nil {
		dc.Trace = t
	}
	conn, err := upstream.Dial(ctx, dc)
	if err != nil {
		return nil, upstream.Status{}, err
	}
	if err := login.Authenticate(ctx, conn, src); err != nil {
		conn.Close()
		return nil, upstream.Status{}, err
	}
	st, err := conn.Select(ctx, up.cfg.Mailbox)
	if err != nil {
		conn.Close()
		return nil, upstream.Status{}, err
	}
	return conn, st, nil
}

// enrolledError turns what failed an enrolled login into the POP3 answer,
// and logs a lost grant once per account.
func (b *Bridge) enrolledError(log *zap.Logger, name string, err error) error {
	switch {
	case errors.Is(err, oauth.ErrReconsent) || errors.Is(err, account.ErrReconsentNeeded):
		if _, logged := b.enrolled.reconsent.LoadOrStore(name, true); !logged {
			log.Warn("the account's OAuth grant is no longer valid: enroll it again (popbridge account add, after account remove)", zap.Error(err))
		} else {
			log.Debug("login refused: the grant needs a new consent")
		}
		return &pop3.Error{Code: errReconsent.Code, Text: errReconsent.Text, Err: err}
	case errors.Is(err, oauth.ErrInvalidClient):
		log.Error("the OAuth provider refused the client", zap.Error(err))
		return &pop3.Error{Code: errOAuthClient.Code, Text: errOAuthClient.Text, Err: err}
	case errors.Is(err, oauth.ErrTemporary):
		log.Warn("the OAuth provider is unavailable", zap.Error(err))
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "the upstream's sign-in service is unavailable, try again later", Err: err}
	}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		log.Warn("OAuth request failed", zap.Error(err))
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "the upstream's sign-in service failed, try again later", Err: err}
	}
	return err
}

// countRefresh counts a refresh in popbridge_oauth_refreshes_total.
func (b *Bridge) countRefresh(result string) {
	if b.onRefresh != nil {
		b.onRefresh(result)
	}
}

// sessionGrants is the oauth.GrantStore of an unlocked account: Load opens
// the stored grant, Update refreshes it under the account's grant lock
// (account.Session.UpdateGrant), which holds across every instance that
// shares the store and reads the grant again inside it.
type sessionGrants struct {
	s     *account.Session
	count func(result string)
}

var _ oauth.GrantStore = (*sessionGrants)(nil)

func (g *sessionGrants) Load(ctx context.Context) (oauth.Grant, error) {
	ag, err := g.s.Grant(ctx)
	if errors.Is(err, account.ErrNoGrant) {
		return oauth.Grant{}, nil
	}
	if err != nil {
		return oauth.Grant{}, err
	}
	return toOAuthGrant(ag), nil
}

func (g *sessionGrants) Update(ctx context.Context, fn func(old oauth.Grant) (oauth.Grant, error)) (oauth.Grant, error) {
	ng, err := g.s.UpdateGrant(ctx, func(old *account.Grant) (*account.Grant, error) {
		var o oauth.Grant
		if old != nil {
			o = toOAuthGrant(old)
		}
		n, err := fn(o)
		switch {
		case errors.Is(err, oauth.ErrReconsent):
			g.count("reconsent")
			// UpdateGrant marks the account on this error.
			return nil, fmt.Errorf("%w: %w", account.ErrReconsentNeeded, err)
		case err != nil:
			g.count("error")
			return nil, err
		}
		if n.AccessToken != o.AccessToken || n.RefreshToken != o.RefreshToken {
			g.count("ok")
		}
		return fromOAuthGrant(n), nil
	})
	if err != nil {
		return oauth.Grant{}, err
	}
	return toOAuthGrant(ng), nil
}

func toOAuthGrant(g *account.Grant) oauth.Grant {
	return oauth.Grant{AccessToken: g.AccessToken, TokenType: g.TokenType, RefreshToken: g.RefreshToken, Expiry: g.Expiry, Scope: g.Scope}
}

func fromOAuthGrant(g oauth.Grant) *account.Grant {
	return &account.Grant{AccessToken: g.AccessToken, TokenType: g.TokenType, RefreshToken: g.RefreshToken, Expiry: g.Expiry, Scope: g.Scope}
}

// ToAccountGrant and FromAccountGrant convert between the two packages'
// grants (the CLI's enrollment).
func ToAccountGrant(g oauth.Grant) *account.Grant   { return fromOAuthGrant(g) }
func FromAccountGrant(g *account.Grant) oauth.Grant { return toOAuthGrant(g) }
