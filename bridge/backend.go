package bridge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// Bridge is the pop3.Backend of popbridge: it resolves a POP3 login to an
// upstream account, logs in there, takes the maildrop lock, brings the
// mailbox record up to date and opens the session's maildrop.
type Bridge struct {
	cfg     Config
	log     *zap.Logger
	store   state.Store
	up      upstream.Config
	records *records
	now     func() time.Time
	drops   *maildropDeps  // what every maildrop is given
	prov    *providerState // [upstream]'s profile, connection budgets and back-off
	warm    *warmPool      // parked upstream connections (warm.go)
	metrics *metrics       // nil: nothing counted (a Bridge without a Server)

	// sessions, when set, counts the sessions of each account
	// (limits.max_sessions_per_account).
	sessions sessionLimiter

	enrolled    *enrolledState      // enrolled accounts (enrolled.go)
	accountOpts AccountOptions      // what enrolled was built with
	onRefresh   func(result string) // counts OAuth refreshes (metrics)
}

// sessionLimiter admits the sessions of an account (Limits does).
type sessionLimiter interface {
	// AcquireSession counts a session of the account of login, or
	// refuses it; release frees its place.
	AcquireSession(login string) (release func(), err error)
}

// NewBridge returns the backend for cfg, which must be valid.
func NewBridge(cfg Config, st state.Store, log *zap.Logger) (*Bridge, error) {
	return NewBridgeWith(cfg, st, log, AccountOptions{})
}

// NewBridgeWith is NewBridge with options for enrolled accounts.
func NewBridgeWith(cfg Config, st state.Store, log *zap.Logger, opts AccountOptions) (*Bridge, error) {
	if log == nil {
		log = zap.NewNop()
	}
	up := upstream.Config{Timeout: cfg.Upstream.Timeout, Logger: log.Named("upstream")}
	if cfg.Upstream.Address != "" {
		var err error
		if up, err = dialConfig(cfg.Upstream, log); err != nil {
			return nil, err
		}
	}
	b := &Bridge{accountOpts: opts, cfg: cfg, log: log, store: st, up: up, records: newRecords(st, &cfg.UIDL.Format), now: time.Now}
	now := func() time.Time { return b.now() }
	enrolled, err := newEnrolled(cfg, st, log, opts, now)
	if err != nil {
		return nil, err
	}
	b.enrolled = enrolled
	b.prov = newProviderState(cfg.Upstream, log, now)
	b.warm = newWarmPool(now)
	b.prov.setEvict(b.warm.evictAccount)
	b.drops = &maildropDeps{
		records:  b.records,
		store:    st,
		delete:   cfg.Delete,
		timeout:  cfg.Upstream.Timeout,
		markSeen: cfg.Upstream.MarkSeenOnRetr,
		ahead:    newAheadPool(readAheadTotal),
		now:      now,
	}
	return b, nil
}

// maildropDeps is what a maildrop needs of the bridge, and nothing more:
// the mailbox records, the store's client records and locks, the delete
// policy, the upstream's timeout, the shared read-ahead budget and the
// clock.
type maildropDeps struct {
	records  *records
	store    state.Store
	delete   DeleteConfig
	timeout  time.Duration // upstream.timeout, or the [[upstreams]] entry's (target.timeout)
	markSeen bool          // upstream.mark_seen_on_retr
	ahead    *aheadPool    // the read-ahead buffers of every session
	now      func() time.Time
	metrics  *metrics // nil: nothing counted
}

// withTimeout returns d with the upstream timeout of a target (an
// [[upstreams]] entry's) where it differs; d itself otherwise.
func (d *maildropDeps) withTimeout(timeout time.Duration) *maildropDeps {
	if timeout <= 0 || timeout == d.timeout {
		return d
	}
	own := *d
	own.timeout = timeout
	return &own
}

// loadClient is store.LoadClient, timed.
func (d *maildropDeps) loadClient(ctx context.Context, k state.ClientKey) (*state.Client, error) {
	defer d.metrics.timeStore("load_client")()
	return d.store.LoadClient(ctx, k)
}

// applyClient is store.ApplyClient, timed.
func (d *maildropDeps) applyClient(ctx context.Context, k state.ClientKey, ch state.ClientChange) error {
	defer d.metrics.timeStore("apply_client")()
	return d.store.ApplyClient(ctx, k, ch)
}

// dialConfig turns the [upstream] table into an upstream.Config,
// loading the CA file when one is named.
func dialConfig(c UpstreamConfig, log *zap.Logger) (upstream.Config, error) {
	sec := c.Security
	host, _, err := net.SplitHostPort(c.Address)
	if err != nil {
		return upstream.Config{}, fmt.Errorf("config: upstream.address: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if c.ServerName != "" {
		tc.ServerName = c.ServerName
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return upstream.Config{}, fmt.Errorf("config: upstream.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return upstream.Config{}, fmt.Errorf("config: upstream.ca_file: no PEM certificate in %s", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.InsecureSkipVerify {
		tc.InsecureSkipVerify = true
		if sec != upstream.SecurityNone {
			log.Warn("upstream TLS certificates are NOT verified (upstream.insecure_skip_verify = true): anyone on the path can read the mail and the passwords")
		}
	}
	if sec == upstream.SecurityNone && !loopbackAddr(c.Address) {
		log.Warn("upstream.allow_cleartext_remote = true: passwords and mail go to the upstream in clear (upstream.security = \"none\"), over a network that is not loopback; anyone on that network can read them",
			zap.String("upstream", c.Address))
	}
	return upstream.Config{Address: c.Address, Security: sec, TLSConfig: tc, Timeout: c.Timeout, Logger: log.Named("upstream")}, nil
}

// splitLogin splits a POP3 login name into the upstream account and the
// device tag: "alice@example.com#laptop" → ("alice@example.com", "laptop").
func (b *Bridge) splitLogin(login string) (account, device string) {
	sep := b.cfg.Auth.DeviceSeparator
	if sep == "" {
		return login, ""
	}
	if i := strings.LastIndex(login, sep); i >= 0 {
		return login[:i], login[i+len(sep):]
	}
	return login, ""
}

// validDevice reports whether a device tag is short and printable, so that
// it is safe in logs and keys.
func validDevice(d string) bool {
	if len(d) > 64 {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-+=@", c) >= 0) {
			return false
		}
	}
	return true
}

// LogFields implements pop3.LogFielder: the account and the device tag.
func (b *Bridge) LogFields(username string) []zap.Field {
	account, device := b.splitLogin(username)
	return []zap.Field{zap.String("account", account), zap.String("device", device)}
}

// Login implements pop3.Backend. A login name enrolled in the account
// registry (bridge/account) is checked against its app passwords here and
// served from its [[upstreams]] entry with a token (enrolled.go); any
// other login's credentials are passed through to the [upstream]'s LOGIN
// (or AUTHENTICATE PLAIN), unless accounts.passthrough is off.
func (b *Bridge) Login(ctx context.Context, ci *pop3.ConnInfo, username, password string) (pop3.Maildrop, error) {
	if password == "" {
		return nil, pop3.ErrAuthFailed
	}
	return b.loginWith(ctx, ci, username, func(ctx context.Context, log *zap.Logger, account string) (target, error) {
		if t, ok, err := b.enrolledTarget(ctx, log, account, password); ok || err != nil {
			return t, err
		}
		t, err := b.passthroughTarget(account, func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error) {
			return b.openUpstream(ctx, account, password)
		})
		t.warm = b.warmLoginOf(account, password)
		return t, err
	})
}

// upstreamOpener logs in to the upstream as account and selects the
// mailbox.
type upstreamOpener func(ctx context.Context, account string) (*upstream.Conn, upstream.Status, error)

// target is where a login is served from: how to open (and reopen) the
// upstream, and the mailbox record's key.
type target struct {
	open       upstreamOpener
	mailboxKey string
	// legacy: records of earlier versions (keyed on upstream.address)
	// may exist for it; pass-through only.
	legacy bool
	// done, when set, is called once the maildrop is released (or the
	// login failed): it forgets the enrolled account's unlocked key.
	done func()
	// timeout, when set, is the timeout of the target's upstream (an
	// [[upstreams]] entry's) instead of upstream.timeout.
	timeout time.Duration
	// prov is the provider state of the target's upstream: [upstream]'s
	// (Bridge.prov) or the [[upstreams]] entry's. Its profile, connection
	// budgets and back-off windows govern the login and the maildrop.
	prov *providerState
	// acct, when set, is the account's key in prov (its budget and
	// back-off window): the upstream identity an enrolled account logs in
	// as, which the provider's limits count, whatever POP3 name it is
	// enrolled under. Unset: the account key of the login
	// (Bridge.accountKey).
	acct string
	// mailbox is the mailbox open selects, and keyFor names the record
	// of another mailbox of the same account (merged maildrops,
	// merged.go); enrolled says whether the account is enrolled.
	mailbox  string
	keyFor   func(mailbox string) string
	enrolled bool
	// warm, when on, lets the session take and leave a warm upstream
	// connection (warm.go); pass-through only.
	warm warmLogin
}

// resolver finds the target of the account part of a login name (device
// tag stripped, the name checked): the one place that decides between an
// enrolled account and pass-through.
type resolver func(ctx context.Context, log *zap.Logger, account string) (target, error)

// passthroughTarget is the [upstream] target of account, or -ERR [AUTH]
// when pass-through is off.
func (b *Bridge) passthroughTarget(account string, open upstreamOpener) (target, error) {
	if !b.cfg.passthroughOn() {
		return target{}, pop3.ErrAuthFailed
	}
	return target{open: open, mailboxKey: b.mailboxKey(account), legacy: true, prov: b.prov, mailbox: b.cfg.Upstream.Mailbox,
		keyFor: func(mb string) string { return MailboxKey(b.cfg.Upstream.Name, b.accountKey(account), mb) }}, nil
}

// loginWith is Login with the upstream left to resolve: it splits the
// device tag, resolves the target, opens the upstream, takes the maildrop
// lock and opens the maildrop.
// The maildrop keeps the target's opener to reconnect with the same
// credentials.
func (b *Bridge) loginWith(ctx context.Context, ci *pop3.ConnInfo, username string, resolve resolver) (pop3.Maildrop, error) {
	// The pop3 package has checked the name already; a Backend checks
	// what it is given.
	if err := pop3.CheckLoginName(username); err != nil {
		return nil, err
	}
	account, device := b.splitLogin(username)
	if account == "" {
		return nil, pop3.ErrAuthFailed
	}
	if !validDevice(device) {
		return nil, &pop3.Error{Code: pop3.CodeAuth, Text: "invalid device tag (letters, digits and ._-+=@ only, at most 64)"}
	}
	log := b.log.With(zap.String("session", ci.ID), zap.String("account", account), zap.String("device", device))
	endSession := func() {}
	if b.sessions != nil {
		var err error
		if endSession, err = b.sessions.AcquireSession(username); err != nil {
			log.Info("login refused", zap.String("reason", err.Error()))
			return nil, err
		}
	}
	endLimit, loggedOut := endSession, b.metrics.sessionLoggedIn()
	endSession = func() { endLimit(); loggedOut() }
	t, err := resolve(ctx, log, account)
	if err != nil {
		endSession()
		return nil, err
	}
	done := endSession
	if t.done != nil {
		done = func() {
			t.done()
			endSession()
		}
	}
	if mc := b.cfg.maildropFor(account, device); mc != nil {
		return b.openMerged(ctx, log, account, device, t, mc, done)
	}
	md, err := b.openMaildrop(ctx, log, account, device, t)
	if err != nil {
		done()
		return nil, err
	}
	lockRelease := md.release
	md.release = func() {
		lockRelease()
		done()
	}
	return md, nil
}

// openMaildrop opens the upstream, takes the maildrop lock and opens the
// maildrop of (account, device).
func (b *Bridge) openMaildrop(ctx context.Context, log *zap.Logger, account, device string, t target) (*maildrop, error) {
	open := t.open
	if t.prov == nil {
		t.prov = b.prov
	}
	if t.acct == "" {
		t.acct = b.accountKey(account)
	}
	conn, st, freeSlot, err := b.openWarm(ctx, log, account, t)
	if err != nil {
		return nil, err
	}
	parked := false // the warm pool took the connection and its budget place
	key := state.ClientKey{Mailbox: t.mailboxKey, Client: device}
	done := b.metrics.timeStore("lock")
	lockRelease, err := b.store.Lock(ctx, key)
	done()
	if err == nil {
		lockRelease = b.metrics.lockTaken(lockRelease)
	}
	release := func() {
		lockRelease()
		if !parked {
			freeSlot()
		}
	}
	if err != nil {
		// In use: the connection stays warm for the device's next login.
		if !errors.Is(err, state.ErrLocked) || !t.warm.on || !b.parkWarm(account, t, conn, st, freeSlot) {
			conn.Close()
			freeSlot()
		}
		if errors.Is(err, state.ErrLocked) {
			return nil, pop3.ErrInUse
		}
		if pe := storeTrouble(log, err); pe != nil {
			return nil, pe
		}
		return nil, &pop3.Error{Code: pop3.CodeSysTemp, Text: "state store unavailable, try again later", Err: err}
	}
	md := &maildrop{
		d: b.drops.withTimeout(t.timeout), prov: t.prov, log: log, key: key, account: account, acct: t.acct, reopen: open,
		conn: conn, status: st, release: release, measured: map[string]int64{},
	}
	if t.warm.on {
		md.park = func(c *upstream.Conn, st upstream.Status) bool {
			parked = b.parkWarm(account, t, c, st, freeSlot)
			return parked
		}
	}
	if t.legacy {
		if err := b.adoptLegacy(ctx, account, key.Mailbox, log); err != nil {
			md.broken = true
			md.Close()
			log.Warn("opening the maildrop failed", zap.Error(err))
			return nil, toPOP3(err)
		}
	}
	if err := md.open(ctx); err != nil {
		// Close calls release, which is the lock's alone here.
		md.broken = true
		md.Close()
		if pe := storeTrouble(log, err); pe != nil {
			return nil, pe
		}
		log.Warn("opening the maildrop failed", zap.Error(err))
		return nil, toPOP3(err)
	}
	return md, nil
}

// openUpstream dials the upstream, logs in with the POP3 credentials and
// selects the configured mailbox.
func (b *Bridge) openUpstream(ctx context.Context, account, password string) (*upstream.Conn, upstream.Status, error) {
	conn, err := upstream.Dial(ctx, b.dialFor(account))
	if err != nil {
		return nil, upstream.Status{}, err
	}
	if err := conn.Login(ctx, account, password); err != nil {
		conn.Close()
		return nil, upstream.Status{}, err
	}
	st, err := conn.Select(ctx, b.cfg.Upstream.Mailbox)
	if err != nil {
		conn.Close()
		return nil, upstream.Status{}, err
	}
	return conn, st, nil
}

// toPOP3 maps an error to what the POP3 client is told (RFC 3206): a
// *pop3.Error is passed on; upstream errors by their kind; anything else is
// a temporary failure. The texts are generic: the cause goes to the logs.
func toPOP3(err error) error {
	var pe *pop3.Error
	if errors.As(err, &pe) {
		return pe
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		if pe, ok := storeProblem(err); ok {
			return pe
		}
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "internal error, try again later", Err: err}
	}
	if ue.Reason == upstream.ReasonThrottled {
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "the upstream server throttles this account; try again later", Err: err}
	}
	switch ue.Kind {
	case upstream.KindAuth:
		return &pop3.Error{Code: pop3.CodeAuth, Text: "authentication failed", Err: err}
	case upstream.KindPerm:
		return &pop3.Error{Code: pop3.CodeSysPerm, Text: "the upstream mailbox refused the operation", Err: err}
	case upstream.KindGone:
		return &pop3.Error{Text: "message no longer exists upstream", Err: err}
	}
	return &pop3.Error{Code: pop3.CodeSysTemp, Text: "upstream server unavailable, try again later", Err: err}
}
