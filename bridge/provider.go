package bridge

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/upstream"
)

// Back-off after the upstream throttled an account: the server's suggested
// wait when it gives one, else backoffFirst, doubled at each throttling in
// a row up to backoffMax. A login that succeeds ends the series.
const (
	backoffFirst = 30 * time.Second
	backoffMax   = 15 * time.Minute
	// budgetWaitMax bounds how long a login waits for one of its
	// account's upstream connections to be freed (upstream.timeout when
	// shorter).
	budgetWaitMax = 10 * time.Second
)

// providerState is what popbridge learns and keeps, in memory, about one
// upstream ([upstream], or one [[upstreams]] entry) and its accounts: its
// profile (configured, the entry's preset's, or recognized at the first
// login), each account's upstream connections (the budget), its back-off
// window after throttling, whether the upstream's sizes were seen to be
// wrong, and which one-time log lines were written. Every login's target
// names the state of its upstream (target.prov).
type providerState struct {
	cfg  UpstreamConfig
	host string
	log  *zap.Logger
	now  func() time.Time
	wait time.Duration // how long a login queues for a connection
	how  string        // how the profile is known: "configured", "preset" or "recognized"

	mu         sync.Mutex
	profile    *Profile // nil until known (auto, before the first login)
	conns      map[string]int
	freed      chan struct{} // closed and replaced when a connection is freed
	backoff    map[string]backoffWindow
	mismatched map[string]bool // mailbox keys whose RFC822.SIZE was seen wrong
	once       map[string]bool
	// evict, when set, closes a parked warm connection of an account
	// (freeing its place) and reports whether there was one.
	evict func(acct string) bool
}

// setEvict sets what admit calls to free a place held by a warm
// connection.
func (ps *providerState) setEvict(evict func(acct string) bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.evict = evict
}

type backoffWindow struct {
	until time.Time
	last  time.Duration
}

func newProviderState(cfg UpstreamConfig, log *zap.Logger, now func() time.Time) *providerState {
	host, _, _ := net.SplitHostPort(cfg.Address)
	ps := &providerState{
		cfg: cfg, host: host, log: log, now: now,
		wait:  min(cfg.Timeout, budgetWaitMax),
		conns: map[string]int{}, freed: make(chan struct{}),
		backoff: map[string]backoffWindow{}, mismatched: map[string]bool{}, once: map[string]bool{},
	}
	ps.how = "recognized"
	if cfg.Profile != "" && cfg.Profile != ProfileAuto {
		ps.profile = profileNamed(cfg.Profile)
		ps.how = "configured"
	} else if p := profileOfHost(host); p != nil {
		ps.profile = p
	}
	return ps
}

// current returns the profile, or generic's while it is not known.
func (ps *providerState) current() *Profile {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.profile == nil {
		return profileNamed("generic")
	}
	return ps.profile
}

// learn recognizes the profile from a logged-in connection, when
// upstream.profile is auto and the host name did not tell, and logs the
// profile once, with what the operator should know of it.
func (ps *providerState) learn(conn *upstream.Conn, policy Policy) *Profile {
	ps.mu.Lock()
	p := ps.profile
	if p == nil {
		p = recognize(ps.host, conn.HasCap, conn.ServerID())
		ps.profile = p
	}
	ps.mu.Unlock()
	if ps.first("profile") {
		ps.log.Info("upstream profile", zap.String("upstream", ps.cfg.Name), zap.String("profile", p.Name), zap.String("how", ps.how),
			zap.Int("max_connections_per_account", maxConnections(ps.cfg.MaxConnectionsPerAccount, p)),
			zap.Bool("measure_sizes", p.SizesUnreliable), zap.String("fingerprint", p.Fingerprint))
		if p.ExpungeArchives && policy == PolicyExpunge {
			ps.log.Warn("delete.policy = expunge does not delete here: " + p.ExpungeNote)
		}
	}
	return p
}

// first reports whether what is asked for the first time (a one-time log
// line).
func (ps *providerState) first(what string) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.once[what] {
		return false
	}
	ps.once[what] = true
	return true
}

// admit checks the account's back-off window and takes one of its
// upstream connections, waiting at most ps.wait for one to be freed. The
// returned release frees it (once).
func (ps *providerState) admit(ctx context.Context, log *zap.Logger, acct string) (release func(), err error) {
	ps.mu.Lock()
	if w, ok := ps.backoff[acct]; ok {
		if left := w.until.Sub(ps.now()); left > 0 {
			ps.mu.Unlock()
			log.Info("login refused: the upstream throttled this account; waiting out its back-off", zap.Duration("wait", left))
			return nil, &pop3.Error{Code: pop3.CodeLoginDelay,
				Text: fmt.Sprintf("the upstream server asks this account to wait; try again in %v", left.Round(time.Second))}
		}
	}
	limit := maxConnections(ps.cfg.MaxConnectionsPerAccount, ps.profileLocked())
	var timer *time.Timer
	for limit > 0 && ps.conns[acct] >= limit {
		if evict := ps.evict; evict != nil {
			// A warm connection of the account gives up its place.
			ps.mu.Unlock()
			evicted := evict(acct)
			ps.mu.Lock()
			if evicted {
				continue
			}
		}
		freed := ps.freed
		ps.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(ps.wait)
			defer timer.Stop()
		}
		select {
		case <-freed:
		case <-timer.C:
			log.Warn("login refused: the account holds its whole upstream connection budget (upstream.max_connections_per_account)",
				zap.Int("max_connections_per_account", limit))
			return nil, &pop3.Error{Code: pop3.CodeSysTemp,
				Text: fmt.Sprintf("this account already has %d upstream connections open; try again shortly", limit)}
		case <-ctx.Done():
			return nil, &pop3.Error{Code: pop3.CodeSysTemp, Text: "try again later", Err: ctx.Err()}
		}
		ps.mu.Lock()
	}
	ps.conns[acct]++
	ps.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			ps.mu.Lock()
			if ps.conns[acct]--; ps.conns[acct] <= 0 {
				delete(ps.conns, acct)
			}
			close(ps.freed)
			ps.freed = make(chan struct{})
			ps.mu.Unlock()
		})
	}, nil
}

func (ps *providerState) profileLocked() *Profile {
	if ps.profile == nil {
		return profileNamed("generic")
	}
	return ps.profile
}

// outcome notes how an upstream login (or a command) of acct went: a
// throttling answer opens or widens the account's back-off window; a login
// that succeeded closes it. It reports whether err was a throttling.
func (ps *providerState) outcome(log *zap.Logger, acct string, err error, login bool) bool {
	throttled := err != nil && upstream.ReasonOf(err) == upstream.ReasonThrottled
	if login && !throttled {
		// A login that failed because the server was unavailable counts
		// as throttling too: the account should wait, not hammer it.
		throttled = err != nil && upstream.ReasonOf(err) == upstream.ReasonUnavailable
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if !throttled {
		if login && err == nil {
			delete(ps.backoff, acct)
		}
		return false
	}
	w := ps.backoff[acct]
	wait := upstream.BackoffHint(err)
	if wait <= 0 {
		wait = backoffFirst
		if w.last > 0 {
			wait = min(2*w.last, backoffMax)
		}
	}
	w.last, w.until = wait, ps.now().Add(wait)
	ps.backoff[acct] = w
	log.Warn("the upstream throttles this account; its logins wait out a back-off", zap.Duration("wait", wait), zap.Error(err))
	return true
}

// measureSizes reports whether the sizes of new messages of mbox are
// measured at their first sync: the profile says RFC822.SIZE is not the
// octets sent, or a RETR found it wrong for this mailbox.
func (ps *providerState) measureSizes(mbox string) bool {
	if ps.current().SizesUnreliable {
		return true
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.mismatched[mbox]
}

// sizeMismatch records that a RETR of mbox sent other octets than the
// upstream's RFC822.SIZE said; it reports whether it is the first time.
func (ps *providerState) sizeMismatch(mbox string) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.mismatched[mbox] {
		return false
	}
	ps.mismatched[mbox] = true
	return true
}

// openAdmitted opens the upstream for account within the connection
// budget and back-off window of acct in prov (providerState.admit), learns the
// profile at the first login, and returns the connection with the function that frees
// its place in the budget. Errors are POP3 answers.
func (b *Bridge) openAdmitted(ctx context.Context, log *zap.Logger, account, acct string, prov *providerState, open upstreamOpener) (*upstream.Conn, upstream.Status, func(), error) {
	freeSlot, err := prov.admit(ctx, log, acct)
	if err != nil {
		return nil, upstream.Status{}, nil, err
	}
	conn, st, err := open(ctx, account)
	if prov.outcome(log, acct, err, true) {
		freeSlot()
		return nil, upstream.Status{}, nil, &pop3.Error{Code: pop3.CodeLoginDelay,
			Text: "the upstream server throttles this account; try again later", Err: err}
	}
	if err != nil {
		freeSlot()
		log.Info("upstream login failed", zap.Error(err))
		return nil, upstream.Status{}, nil, toPOP3(err)
	}
	p := prov.learn(conn, b.cfg.Delete.Policy)
	if p.LimitedView && st.UIDNext > 1 && st.UIDNext-1 > st.NumMessages && prov.first("limited-view "+acct) {
		log.Warn("the upstream mailbox shows fewer messages than were delivered to it (UIDNEXT); if messages are missing, the provider may show IMAP only the newest part of the mailbox (Yahoo: turn off the IMAP \"limited mode\" in the account's settings)",
			zap.String("profile", p.Name), zap.Uint32("exists", st.NumMessages), zap.Uint32("uidnext", st.UIDNext))
	}
	return conn, st, freeSlot, nil
}
