package bridge

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/upstream"
)

// Warm upstream connections.
//
// A session that ends well (QUIT or a dropped client, its UPDATE applied,
// its upstream connection open and its mailbox selected) leaves that
// connection in the warm pool for upstream.warm_ttl. The next session of
// the same upstream, account, mailbox and password takes it instead of
// dialing, logging in and selecting: it ends the connection's IDLE and
// SELECTs again in one round trip (upstream.Conn.Resume), which gives the
// sync exact markers. A connection is in the pool or in one session,
// never both, and never in two sessions.
//
// The password is never kept: an entry holds an HMAC-SHA256 of the login
// and password under a key drawn at start and held in memory only, and a
// login's HMAC is compared in constant time. Any other password goes to a
// real upstream login (and fails, or succeeds, as without the pool). As
// with Dovecot's auth cache, a password changed upstream keeps working
// through a warm connection until that connection's TTL ends.
//
// A parked connection keeps its place in the account's connection budget
// (providerState.admit); a login that finds the budget full closes one of
// the account's parked connections instead of waiting.
//
// Enrolled (OAuth) accounts get no warm connections: their IMAP login is a
// token's, whose lifetime and revocation the provider decides, not
// warm_ttl.

// maxWarmTTL bounds upstream.warm_ttl: below the 29 minutes after which a
// server may end an IDLE (RFC 2177), with room for NAT and load balancer
// idle timers.
const maxWarmTTL = 25 * time.Minute

// warmKeepalive is how often a parked connection without IDLE sends a
// NOOP: half its TTL, at most every 4 minutes.
func warmKeepalive(ttl time.Duration) time.Duration { return min(ttl/2, 4*time.Minute) }

// warmCred is the HMAC of a login's account and password.
type warmCred [sha256.Size]byte

// warmLogin is what a pass-through login offers the pool: its HMAC.
type warmLogin struct {
	on   bool
	cred warmCred
}

// warmConn is one parked connection.
type warmConn struct {
	key     string // upstream, account key, mailbox (Bridge.warmKey)
	acct    string // the account key, for the budget
	cred    warmCred
	conn    *upstream.Conn
	status  upstream.Status // the SELECT the session was served from
	free    func()          // frees its place in the account's budget
	expires time.Time

	timer   *time.Timer   // closes it at its TTL
	unwatch chan struct{} // ends the watch on its closing
}

// warmPool holds the warm connections of the process. It outlives
// reloads (each session parks with the limits its Bridge was built with).
type warmPool struct {
	hkey [32]byte // the HMAC key: random, per process, memory only
	now  func() time.Time

	mu      sync.Mutex
	entries []*warmConn // oldest first
	closed  bool
	held    prometheus.Gauge // nil: not counted
}

func newWarmPool(now func() time.Time) *warmPool {
	p := &warmPool{now: now}
	rand.Read(p.hkey[:])
	return p
}

// setMetrics counts the pool's connections in m.
func (p *warmPool) setMetrics(m *metrics) {
	if m == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = m.warmHeld
	p.held.Set(float64(len(p.entries)))
}

// cred returns the HMAC of account and password, length-prefixed so that
// no two pairs share an input.
func (p *warmPool) cred(account, password string) warmCred {
	mac := hmac.New(sha256.New, p.hkey[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(account)))
	mac.Write(n[:])
	mac.Write([]byte(account))
	mac.Write([]byte(password))
	var c warmCred
	mac.Sum(c[:0])
	return c
}

// countLocked updates the gauge; p.mu is held.
func (p *warmPool) countLocked() {
	if p.held != nil {
		p.held.Set(float64(len(p.entries)))
	}
}

// removeLocked takes w out of the pool and reports whether it was there;
// p.mu is held.
func (p *warmPool) removeLocked(w *warmConn) bool {
	for i, e := range p.entries {
		if e == w {
			p.entries = append(p.entries[:i], p.entries[i+1:]...)
			w.timer.Stop()
			close(w.unwatch)
			p.countLocked()
			return true
		}
	}
	return false
}

// take removes and returns the parked connection of key logged in with
// cred, or says why there is none: "none", "credentials" (only other
// passwords' connections are parked) or "expired" (it was, and is closed
// now).
func (p *warmPool) take(key string, cred warmCred) (*warmConn, string) {
	p.mu.Lock()
	reason := "none"
	var found, expired *warmConn
	for _, e := range p.entries {
		if e.key != key {
			continue
		}
		if !hmac.Equal(e.cred[:], cred[:]) {
			reason = "credentials"
			continue
		}
		if !p.now().Before(e.expires) {
			expired = e
			continue
		}
		found = e
		break
	}
	if found != nil {
		p.removeLocked(found)
		p.mu.Unlock()
		return found, ""
	}
	if expired != nil {
		p.removeLocked(expired)
		reason = "expired"
	}
	p.mu.Unlock()
	if expired != nil {
		go p.discard(expired)
	}
	return nil, reason
}

// discard closes w (LOGOUT) and frees its budget place.
func (p *warmPool) discard(w *warmConn) {
	w.conn.Close()
	w.free()
}

// evict closes w if it is still parked.
func (p *warmPool) evict(w *warmConn) {
	p.mu.Lock()
	ok := p.removeLocked(w)
	p.mu.Unlock()
	if ok {
		p.discard(w)
	}
}

// put parks w for ttl, within perAccount connections of its account and
// total in all, closing the oldest ones beyond either. It reports false
// (and leaves w to the caller) when the pool is off or closed.
func (p *warmPool) put(w *warmConn, ttl time.Duration, perAccount, total int) bool {
	if ttl <= 0 || perAccount <= 0 || total <= 0 || !w.conn.Alive() {
		return false
	}
	if err := w.conn.Park(warmKeepalive(ttl)); err != nil {
		return false
	}
	w.unwatch = make(chan struct{})
	w.expires = p.now().Add(ttl)
	var out []*warmConn
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	n := 0
	for _, e := range p.entries {
		if e.acct == w.acct {
			n++
		}
	}
	for i := 0; i < len(p.entries) && n >= perAccount; {
		if e := p.entries[i]; e.acct == w.acct {
			p.removeLocked(e)
			out = append(out, e)
			n--
			continue
		}
		i++
	}
	for len(p.entries) >= total {
		e := p.entries[0]
		p.removeLocked(e)
		out = append(out, e)
	}
	w.timer = time.AfterFunc(ttl, func() { p.evict(w) })
	p.entries = append(p.entries, w)
	p.countLocked()
	p.mu.Unlock()
	for _, e := range out {
		go p.discard(e)
	}
	go func() {
		select {
		case <-w.conn.Closed():
			// BYE, a dropped connection, a failed NOOP.
			p.evict(w)
		case <-w.unwatch:
		}
	}()
	return true
}

// evictAccount closes the oldest parked connection of acct, freeing its
// budget place, and reports whether there was one.
func (p *warmPool) evictAccount(acct string) bool {
	p.mu.Lock()
	var w *warmConn
	for _, e := range p.entries {
		if e.acct == acct {
			w = e
			break
		}
	}
	if w != nil {
		p.removeLocked(w)
	}
	p.mu.Unlock()
	if w == nil {
		return false
	}
	p.discard(w)
	return true
}

// dropKey closes the parked connections of key, except those of keep
// (nil: all): another password logged in, so theirs may be stale.
func (p *warmPool) dropKey(key string, keep *warmCred) {
	var out []*warmConn
	p.mu.Lock()
	for i := 0; i < len(p.entries); {
		e := p.entries[i]
		if e.key == key && (keep == nil || !hmac.Equal(e.cred[:], keep[:])) {
			p.removeLocked(e)
			out = append(out, e)
			continue
		}
		i++
	}
	p.mu.Unlock()
	for _, e := range out {
		go p.discard(e)
	}
}

// closeAll logs out of every parked connection and parks no more
// (shutdown).
func (p *warmPool) closeAll() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.drain()
}

// drain logs out of every parked connection (a reload that turns warm
// connections off or moves the upstream: none of them may serve again).
func (p *warmPool) drain() {
	p.mu.Lock()
	out := p.entries
	for _, e := range out {
		e.timer.Stop()
		close(e.unwatch)
	}
	p.entries = nil
	p.countLocked()
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range out {
		wg.Go(func() { p.discard(e) })
	}
	wg.Wait()
}

// warmOn reports whether the configuration parks connections.
func warmOn(c UpstreamConfig) bool {
	return c.WarmTTL > 0 && c.WarmPerAccount > 0 && c.WarmTotal > 0
}

// warmLoginOf is the pool's view of a pass-through login.
func (b *Bridge) warmLoginOf(account, password string) warmLogin {
	if !warmOn(b.cfg.Upstream) {
		return warmLogin{}
	}
	return warmLogin{on: true, cred: b.warm.cred(b.accountKey(account), password)}
}

// warmKey is the pool's key of a target: the upstream (address and
// security, so that a reload to another server never reuses one of the
// old) and the mailbox record's key (upstream name, account key, mailbox).
func (b *Bridge) warmKey(t target) string {
	return b.cfg.Upstream.Address + "\x00" + b.cfg.Upstream.Security.String() + "\x00" + t.mailboxKey
}

// openWarm serves t from a warm connection when one of its password is
// parked and still good, else opens the upstream as before
// (openAdmitted). A warm connection whose Resume fails, or whose mailbox's
// UIDVALIDITY changed, is closed, never used.
func (b *Bridge) openWarm(ctx context.Context, log *zap.Logger, account string, t target) (*upstream.Conn, upstream.Status, func(), error) {
	if !t.warm.on {
		return b.openAdmitted(ctx, log, account, t.acct, t.prov, t.open)
	}
	key := b.warmKey(t)
	if !warmOn(b.cfg.Upstream) {
		b.warm.dropKey(key, nil)
		return b.openAdmitted(ctx, log, account, t.acct, t.prov, t.open)
	}
	w, reason := b.warm.take(key, t.warm.cred)
	if w != nil {
		st, err := w.conn.Resume(ctx, b.cfg.Upstream.Mailbox)
		switch {
		case err != nil:
			reason = "broken"
			log.Info("a warm upstream connection failed; logging in afresh", zap.Error(err))
		case st.UIDValidity != w.status.UIDValidity:
			reason = "uidvalidity"
			log.Info("the upstream UIDVALIDITY changed while the connection was warm; logging in afresh",
				zap.Uint32("old_uidvalidity", w.status.UIDValidity), zap.Uint32("uidvalidity", st.UIDValidity))
		default:
			if m := b.metrics; m != nil {
				m.warmReuses.Inc()
			}
			log.Debug("serving the session from a warm upstream connection")
			return w.conn, st, w.free, nil
		}
		w.conn.Close()
		w.free()
	}
	if m := b.metrics; m != nil {
		m.warmMisses.WithLabelValues(reason).Inc()
	}
	conn, st, free, err := b.openAdmitted(ctx, log, account, t.acct, t.prov, t.open)
	if err == nil {
		b.warm.dropKey(key, &t.warm.cred)
	}
	return conn, st, free, err
}

// parkWarm offers the connection of a session that ended well to the
// pool; it reports whether the pool took it (with its budget place, free).
func (b *Bridge) parkWarm(account string, t target, conn *upstream.Conn, st upstream.Status, free func()) bool {
	c := b.cfg.Upstream
	if !t.warm.on || !warmOn(c) {
		return false
	}
	w := &warmConn{key: b.warmKey(t), acct: b.accountKey(account), cred: t.warm.cred, conn: conn, status: st, free: free}
	return b.warm.put(w, c.WarmTTL, c.WarmPerAccount, c.WarmTotal)
}

// registerWarm registers the metrics of warm connections.
func (m *metrics) registerWarm(reg *prometheus.Registry) {
	m.warmReuses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "popbridge_upstream_warm_reuses_total",
		Help: "Sessions served on a warm upstream connection (no upstream login).",
	})
	m.warmMisses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "popbridge_upstream_warm_misses_total",
		Help: "Pass-through sessions that found no warm upstream connection to use, by reason.",
	}, []string{"reason"})
	m.warmHeld = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "popbridge_upstream_warm_connections",
		Help: "Warm upstream connections held now.",
	})
	for _, r := range []string{"none", "credentials", "expired", "broken", "uidvalidity"} {
		m.warmMisses.WithLabelValues(r)
	}
	reg.MustRegister(m.warmReuses, m.warmMisses, m.warmHeld)
}
