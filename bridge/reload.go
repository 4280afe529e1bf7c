package bridge

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/configfile"
	"github.com/popbridge/popbridge/pop3"
)

// ReloadTLS reads the [tls] certificate and key files again and returns
// the new certificate. Connections from then on get it; sessions already
// running keep theirs. On any error (a missing file, a key that does not
// match) the certificate in use stays. Without [tls] it is an error.
// Reload does this and more.
func (s *Server) ReloadTLS() (*x509.Certificate, error) {
	if s.cert == nil {
		return nil, errors.New("no [tls] certificate configured")
	}
	leaf, err := s.cert.Reload()
	if err != nil {
		return nil, fmt.Errorf("reloading the TLS certificate (keeping the current one): %w", err)
	}
	return leaf, nil
}

// fixedTables are the tables and keys that cannot change while the server
// runs: the listeners and their timeouts, the state store, the admin
// listener, how logins map to accounts and state keys (and so to the
// limits' counts and the maildrop locks), the UIDL template and the log's
// format. Reload keeps the running values and logs which ones it kept.
var fixedTables = []string{"server", "state", "admin", "auth", "uidl", "log.format"}

// runningConfig returns what a reload to cfg runs with: cfg, except what
// cannot change while the server runs (fixedTables, and [tls] turned on or
// off), which keeps the values of cur.
func runningConfig(cur, cfg Config) Config {
	next := cfg
	next.Server, next.State, next.Admin, next.Auth, next.UIDL = cur.Server, cur.State, cur.Admin, cur.Auth, cur.UIDL
	next.Log.Format = cur.Log.Format
	if (cur.TLS.CertFile == "") != (cfg.TLS.CertFile == "") {
		next.TLS = cur.TLS // the listeners were made with TLS or without it
	}
	return next
}

// Reload applies cfg to the running server without dropping a session:
// sessions already logged in keep the settings they started with (delete
// policy, upstream, timeouts) until they end; new connections and logins
// get the new ones. What it changes:
//
//   - log.level (through LogLevel, when set) and log.upstream_trace(_accounts);
//   - [limits]: new connections, logins and sessions are admitted against
//     the new limits; those open now still count (the counts of failed
//     logins start anew when their limits or window change);
//   - [delete]: the policy, move_to and flags of UPDATEs decided from now on;
//   - [tls]: the certificate and key files are read again (also when the
//     paths are unchanged, so that a renewed certificate is picked up);
//   - [upstream]: the server, security, timeout, mailbox, and the rest, for
//     new logins;
//   - [[upstreams]]: the entries, for new logins. The provider state of
//     [upstream] and of each entry (the connections its accounts hold,
//     their back-off windows) is kept unless its address, profile or
//     connection budget changed.
//
// What cannot change while the server runs (listen addresses, [server]
// timeouts and PROXY networks, [state], [admin], [auth], [uidl], log.format,
// and turning [tls] on or off) keeps its running value, and a warning names
// each key. If cfg does not validate, or its certificate, key or CA file
// cannot be read, Reload changes nothing and returns every reason.
func (s *Server) Reload(cfg Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w\n(keeping the running configuration)", err)
	}
	cur := s.cfg
	next := runningConfig(cur, cfg)
	if err := next.Validate(); err != nil {
		return fmt.Errorf("%w\n(keeping the running configuration)", err)
	}
	old := s.backend.current()
	nb, err := old.reconfigured(next)
	if err != nil {
		return fmt.Errorf("%w (keeping the running configuration)", err)
	}
	var leaf *x509.Certificate
	if s.cert != nil {
		// The last step that can fail; it swaps the certificate only
		// when it succeeds.
		if leaf, err = s.cert.ReloadFiles(next.TLS.CertFile, next.TLS.KeyFile); err != nil {
			return fmt.Errorf("config: tls: %w (keeping the running configuration and certificate)", err)
		}
	}
	// Nothing fails from here on.
	s.Limits.SetConfig(next.Limits)
	if s.LogLevel != nil {
		s.LogLevel.SetLevel(next.Log.Level)
	}
	s.backend.cur.Store(nb)
	s.cfg = next

	changed := configfile.Diff(cur, next)
	fields := []zap.Field{zap.Strings("changed", changed), zap.String("delete_policy", string(next.Delete.Policy)),
		zap.String("upstream", next.Upstream.Address), zap.Stringer("log_level", next.Log.Level)}
	if leaf != nil {
		fields = append(fields, zap.String("tls_subject", leaf.Subject.String()), zap.Strings("tls_dns_names", leaf.DNSNames),
			zap.Time("tls_not_after", leaf.NotAfter))
	}
	s.log.Info("configuration reloaded", fields...)
	if kept := configfile.Diff(next, cfg); len(kept) > 0 {
		s.log.Warn("configuration keys that cannot change while popbridge runs kept their running values; restart to apply them",
			zap.Strings("kept", kept), zap.String("fixed", strings.Join(fixedTables, ", ")+", tls (on/off)"))
	}
	return nil
}

// reconfigured returns a Bridge for cfg that shares with b what outlives a
// reload: the store, the mailbox records and their cache, the read-ahead
// budget, the metrics, the session counts and the clock.
func (b *Bridge) reconfigured(cfg Config) (*Bridge, error) {
	nb, err := NewBridgeWith(cfg, b.store, b.log, b.accountOpts)
	if err != nil {
		return nil, err
	}
	nb.onRefresh = b.onRefresh
	// A provider state holds the connections each account has open and
	// the back-off windows: [upstream]'s, and each [[upstreams]] entry's,
	// outlives a reload unless the upstream it describes changed. A
	// changed one starts anew for new logins; the sessions of the old one
	// free their places in it.
	if sameProvider(cfg.Upstream, b.cfg.Upstream) {
		nb.prov = b.prov
	}
	for name, up := range nb.enrolled.upstreams {
		if old := b.enrolled.upstreams[name]; old != nil && sameProvider(up.cfg.UpstreamConfig, old.cfg.UpstreamConfig) {
			up.prov = old.prov
		}
	}
	nb.warm = b.warm
	if o, n := b.cfg.Upstream, cfg.Upstream; !warmOn(n) || o.Address != n.Address || o.Security != n.Security {
		// No parked connection can serve a login of the new
		// configuration: log them out now rather than at their TTL.
		nb.warm.drain()
	}
	nb.prov.setEvict(b.warm.evictAccount)
	nb.records = b.records
	nb.now = b.now
	nb.sessions = b.sessions
	nb.metrics = b.metrics
	nb.up.Observe = b.up.Observe
	nb.drops.records = b.records
	nb.drops.ahead = b.drops.ahead
	nb.drops.metrics = b.drops.metrics
	return nb, nil
}

// sameProvider reports whether a provider state of a can serve b: the
// same server, profile and connection budget.
func sameProvider(a, b UpstreamConfig) bool {
	return a.Address == b.Address && a.Profile == b.Profile && a.MaxConnectionsPerAccount == b.MaxConnectionsPerAccount
}

// switchBackend is the pop3.Backend of a Server: each login goes to the
// Bridge current at that moment, which serves the session to its end, so
// that Reload can put a new Bridge in place without touching a session.
// It forwards every interface of Bridge that the pop3 package asks for.
type switchBackend struct {
	cur atomic.Pointer[Bridge]
}

var _ pop3.TokenBackend = (*switchBackend)(nil)
var _ pop3.LogFielder = (*switchBackend)(nil)

func (s *switchBackend) current() *Bridge { return s.cur.Load() }

// Login implements pop3.Backend.
func (s *switchBackend) Login(ctx context.Context, ci *pop3.ConnInfo, username, password string) (pop3.Maildrop, error) {
	return s.current().Login(ctx, ci, username, password)
}

// LogFields implements pop3.LogFielder.
func (s *switchBackend) LogFields(username string) []zap.Field {
	return s.current().LogFields(username)
}

// TokenMechanisms implements pop3.TokenBackend.
func (s *switchBackend) TokenMechanisms() []string { return s.current().TokenMechanisms() }

// LoginToken implements pop3.TokenBackend.
func (s *switchBackend) LoginToken(ctx context.Context, ci *pop3.ConnInfo, mech, username, token string) (pop3.Maildrop, error) {
	return s.current().LoginToken(ctx, ci, mech, username, token)
}
