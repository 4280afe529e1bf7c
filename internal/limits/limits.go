// Package limits is popbridge's abuse control: it caps open connections in
// total and per client address, counts failed logins per address and per
// account (pausing before a failure is answered and refusing further
// attempts once a count is reached), and caps the sessions of one account.
// It knows nothing of POP3: a refusal is a *Refusal, which the server turns
// into its protocol's answer.
package limits

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/popbridge/popbridge/internal/netlist"
)

// Config is the [limits] table: abuse control. A zero count turns its
// limit off. Per-address limits count an IPv6 client by its /64.
type Config struct {
	MaxConnections      int `toml:"max_connections"`        // open connections in total
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"` // open connections per client address
	// LoginFailureDelay is the pause before a failed login is answered;
	// it doubles with each further recent failure of the address or the
	// account, up to LoginFailureDelayMax.
	LoginFailureDelay    time.Duration `toml:"login_failure_delay"`
	LoginFailureDelayMax time.Duration `toml:"login_failure_delay_max"`
	// Failed logins allowed per client address and per account within
	// LoginFailureWindow; beyond them logins are refused until the window
	// lets one more through (the count decays steadily: one failure per
	// window/max).
	MaxLoginFailuresPerIP      int           `toml:"max_login_failures_per_ip"`
	MaxLoginFailuresPerAccount int           `toml:"max_login_failures_per_account"`
	LoginFailureWindow         time.Duration `toml:"login_failure_window"`
	// ExemptNetworks are client addresses and networks (CIDR) the
	// per-address limits do not apply to; the account and total limits
	// still do.
	ExemptNetworks netlist.List `toml:"exempt_networks"`
	// MaxSessionsPerAccount caps the sessions of one account (all its
	// devices, logins in progress included) on this instance.
	MaxSessionsPerAccount int `toml:"max_sessions_per_account"`
}

// Check reports each problem of c to add, with the key (within the table)
// it concerns.
func (c *Config) Check(add func(key, msg string)) {
	for _, n := range []struct {
		key string
		n   int
	}{
		{"max_connections", c.MaxConnections},
		{"max_connections_per_ip", c.MaxConnectionsPerIP},
		{"max_login_failures_per_ip", c.MaxLoginFailuresPerIP},
		{"max_login_failures_per_account", c.MaxLoginFailuresPerAccount},
		{"max_sessions_per_account", c.MaxSessionsPerAccount},
	} {
		if n.n < 0 {
			add(n.key, "must not be negative (0 turns the limit off)")
		}
	}
	if c.LoginFailureDelay < 0 {
		add("login_failure_delay", "must not be negative")
	}
	if c.LoginFailureDelayMax < c.LoginFailureDelay {
		add("login_failure_delay_max", fmt.Sprintf("%v is below login_failure_delay (%v)", c.LoginFailureDelayMax, c.LoginFailureDelay))
	}
	if (c.MaxLoginFailuresPerIP > 0 || c.MaxLoginFailuresPerAccount > 0) && c.LoginFailureWindow <= 0 {
		add("login_failure_window", "must be positive")
	}
}

// Kind says which limit refused.
type Kind string

const (
	Connections          Kind = "connections"            // MaxConnections
	ConnectionsPerIP     Kind = "connections_per_ip"     // MaxConnectionsPerIP
	LoginFailuresIP      Kind = "login_failures_ip"      // MaxLoginFailuresPerIP
	LoginFailuresAccount Kind = "login_failures_account" // MaxLoginFailuresPerAccount
	SessionsPerAccount   Kind = "sessions_per_account"   // MaxSessionsPerAccount
)

// Refusal is the error of a refused connection, login or session: Text is
// for the client, Err (which names the limit and the counts) for the log.
type Refusal struct {
	Kind Kind
	Text string
	Err  error
}

func (r *Refusal) Error() string { return r.Text + ": " + r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// Limits holds the counts of one server. AcquireConn caps open connections
// in total and per client address; BeginLogin counts failed logins per
// client address and per account, pauses before answering a failure (a
// delay that doubles with each recent failure), and refuses logins once
// either count reaches its limit. Logins in progress
// count as failures until they succeed, so that a burst of guesses sent
// at once cannot overrun the limit. AcquireSession caps the sessions of
// one account.
//
// A client address is an IPv4 address or an IPv6 /64 (one subscriber's
// share). The counts of failures decay steadily (token buckets of
// golang.org/x/time/rate): max failures per window, one forgiven every
// window/max.
type Limits struct {
	account func(login string) string // the account a login name counts against
	now     func() time.Time

	mu       sync.Mutex
	cfg      Config
	exempt   []netip.Prefix
	conns    int
	perIP    map[string]int
	sessions map[string]int // open sessions by account
	ipFail   failureTable
	acctFail failureTable
}

// New returns the limits of cfg, which must be valid; account maps a login
// name to the account its failures and sessions count against (nil: the
// name as it is).
func New(cfg Config, account func(login string) string) *Limits {
	exempt := cfg.ExemptNetworks
	if account == nil {
		account = func(login string) string { return login }
	}
	l := &Limits{cfg: cfg, exempt: exempt, account: account, now: time.Now, perIP: map[string]int{}, sessions: map[string]int{}}
	l.ipFail = newFailureTable(cfg.MaxLoginFailuresPerIP, cfg.LoginFailureWindow)
	l.acctFail = newFailureTable(cfg.MaxLoginFailuresPerAccount, cfg.LoginFailureWindow)
	return l
}

// SetConfig replaces the limits with those of cfg, which must be valid
// (a configuration reload). Connections, logins and sessions open now
// keep counting: new ones are admitted against the new limits (lowering
// a limit refuses new ones until enough of the others end; none is cut
// off). The counts of failed logins start anew when
// max_login_failures_per_ip, max_login_failures_per_account or
// login_failure_window change, and are kept otherwise.
func (l *Limits) SetConfig(cfg Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cfg
	l.cfg, l.exempt = cfg, cfg.ExemptNetworks
	if old.MaxLoginFailuresPerIP != cfg.MaxLoginFailuresPerIP || old.LoginFailureWindow != cfg.LoginFailureWindow {
		l.ipFail = newFailureTable(cfg.MaxLoginFailuresPerIP, cfg.LoginFailureWindow)
	}
	if old.MaxLoginFailuresPerAccount != cfg.MaxLoginFailuresPerAccount || old.LoginFailureWindow != cfg.LoginFailureWindow {
		l.acctFail = newFailureTable(cfg.MaxLoginFailuresPerAccount, cfg.LoginFailureWindow)
	}
}

// clientKey returns the key of remote for the per-address limits (the
// IPv4 address, or the IPv6 /64) and whether it is exempt from them.
func (l *Limits) clientKey(remote net.Addr) (key string, exempt bool) {
	if remote == nil {
		return "", true
	}
	ip, ok := netlist.AddrIP(remote)
	if !ok {
		return remote.String(), false // not IP (a pipe in tests): one bucket
	}
	ip = ip.WithZone("")
	l.mu.Lock()
	exemptNets := l.exempt
	l.mu.Unlock()
	if netlist.Contains(exemptNets, ip) {
		return "", true
	}
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String(), false
	}
	return ip.String(), false
}

// AcquireConn admits a connection from remote, or refuses it with a
// *Refusal. release ends it; it may be called more than once.
func (l *Limits) AcquireConn(remote net.Addr) (release func(), err error) {
	key, exempt := l.clientKey(remote)
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.cfg.MaxConnections; n > 0 && l.conns >= n {
		return nil, &Refusal{Kind: Connections, Text: "too many connections, try again later",
			Err: fmt.Errorf("%d connections open (limits.max_connections)", l.conns)}
	}
	perIP := !exempt && l.cfg.MaxConnectionsPerIP > 0
	if perIP && l.perIP[key] >= l.cfg.MaxConnectionsPerIP {
		return nil, &Refusal{Kind: ConnectionsPerIP, Text: "too many connections from your address, try again later",
			Err: fmt.Errorf("%d connections open from %s (limits.max_connections_per_ip)", l.perIP[key], key)}
	}
	l.conns++
	if perIP {
		l.perIP[key]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.conns--
			if perIP {
				if l.perIP[key]--; l.perIP[key] <= 0 {
					delete(l.perIP, key)
				}
			}
		})
	}, nil
}

// BeginLogin admits a login attempt of username from remote, or refuses
// it with a *Refusal. end(failed) ends the attempt and returns the pause
// before a failure is answered.
func (l *Limits) BeginLogin(remote net.Addr, username string) (func(failed bool) time.Duration, error) {
	key, exempt := l.clientKey(remote)
	acct := l.account(username)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var ipF, acctF *failures
	if !exempt {
		ipF = l.ipFail.get(key, now)
	}
	acctF = l.acctFail.get(acct, now)
	if ipF.exhausted(now) {
		return nil, &Refusal{Kind: LoginFailuresIP, Text: "too many failed logins from your address, try again later",
			Err: fmt.Errorf("%s reached limits.max_login_failures_per_ip (%d per %v; %s)", key, l.cfg.MaxLoginFailuresPerIP, l.cfg.LoginFailureWindow, ipF.describe(now))}
	}
	if acctF.exhausted(now) {
		return nil, &Refusal{Kind: LoginFailuresAccount, Text: "too many failed logins for this account, try again later",
			Err: fmt.Errorf("account %q reached limits.max_login_failures_per_account (%d per %v; %s)", acct, l.cfg.MaxLoginFailuresPerAccount, l.cfg.LoginFailureWindow, acctF.describe(now))}
	}
	ipF.begin()
	acctF.begin()
	var once sync.Once
	return func(failed bool) (delay time.Duration) {
		once.Do(func() {
			now := l.now()
			l.mu.Lock()
			defer l.mu.Unlock()
			ipF.end(failed, now)
			acctF.end(failed, now)
			if failed {
				delay = l.delay(max(ipF.recent(now), acctF.recent(now), 1))
			}
		})
		return delay
	}, nil
}

// AcquireSession counts a session of the account of login and refuses it
// with a *Refusal when limits.max_sessions_per_account are open already.
// The caller calls release once, when the session (or the login that
// failed) ends. A session counts from the start of its login, so that
// logins in progress cannot overrun the cap either.
func (l *Limits) AcquireSession(login string) (release func(), err error) {
	acct := l.account(login)
	l.mu.Lock()
	defer l.mu.Unlock()
	max := l.cfg.MaxSessionsPerAccount
	if max <= 0 {
		return func() {}, nil
	}
	if n := l.sessions[acct]; n >= max {
		return nil, &Refusal{Kind: SessionsPerAccount, Text: fmt.Sprintf("too many sessions for this account (at most %d at once), try again later", max),
			Err: fmt.Errorf("account %q has %d sessions open (limits.max_sessions_per_account)", acct, n)}
	}
	l.sessions[acct]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.sessions[acct]--; l.sessions[acct] <= 0 {
				delete(l.sessions, acct)
			}
		})
	}, nil
}

// delay is the pause after a failure when n failures are recent: the
// base delay, doubled for each failure after the first, capped.
func (l *Limits) delay(n int) time.Duration {
	d, top := l.cfg.LoginFailureDelay, l.cfg.LoginFailureDelayMax
	for i := 1; i < n && d < top; i++ {
		d *= 2
	}
	return min(d, top)
}

// failures counts the recent failed logins of one address or account.
type failures struct {
	lim      *rate.Limiter // one token per failure allowed
	burst    int
	inflight int // attempts begun and not yet ended
}

// exhausted reports whether no further attempt may start: the failures
// allowed are used up by recent failures and attempts in flight
// together. Every attempt in flight reserves one failure until it ends,
// so that at most the limit are ever outstanding or failed within the
// window, however many are sent at once; a success gives its reservation
// back. A nil *failures (limit off, or exempt) is never exhausted.
func (f *failures) exhausted(now time.Time) bool {
	if f == nil {
		return false
	}
	return f.lim.TokensAt(now)-float64(f.inflight) < 1
}

// describe says what fills the limit, for the log.
func (f *failures) describe(now time.Time) string {
	return fmt.Sprintf("%d recent failures, %d logins in progress", f.recent(now), f.inflight)
}

func (f *failures) begin() {
	if f != nil {
		f.inflight++
	}
}

func (f *failures) end(failed bool, now time.Time) {
	if f == nil {
		return
	}
	f.inflight--
	if failed {
		f.lim.AllowN(now, 1)
	}
}

// recent returns the number of failures not yet forgiven.
func (f *failures) recent(now time.Time) int {
	if f == nil {
		return 0
	}
	return int(math.Ceil(float64(f.burst) - f.lim.TokensAt(now) - 1e-9))
}

// idle reports whether f holds nothing worth keeping.
func (f *failures) idle(now time.Time) bool {
	return f.inflight == 0 && f.lim.TokensAt(now) >= float64(f.burst)
}

// failureTable holds the failure counts by key; counts that have decayed
// to nothing are swept out as the table grows, so its size follows the
// recent failures, not every address ever seen.
type failureTable struct {
	max     int
	every   rate.Limit
	m       map[string]*failures
	sweepAt int
}

const minSweep = 1024

func newFailureTable(limit int, window time.Duration) failureTable {
	t := failureTable{max: limit, m: map[string]*failures{}, sweepAt: minSweep}
	if limit > 0 {
		t.every = rate.Every(window / time.Duration(limit))
	}
	return t
}

// get returns the counts of key, creating them; nil when the limit is off.
func (t *failureTable) get(key string, now time.Time) *failures {
	if t.max <= 0 {
		return nil
	}
	if f, ok := t.m[key]; ok {
		return f
	}
	if len(t.m) >= t.sweepAt {
		for k, f := range t.m {
			if f.idle(now) {
				delete(t.m, k)
			}
		}
		t.sweepAt = max(minSweep, 2*len(t.m))
	}
	f := &failures{lim: rate.NewLimiter(t.every, t.max), burst: t.max}
	t.m[key] = f
	return f
}
