package bridge

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// metrics are popbridge's own Prometheus metrics. No label holds a user
// name, an address or anything else a client chooses: every label value
// comes from a short fixed list. README's "Operations" section lists them.
type metrics struct {
	sessions      *prometheus.CounterVec // outcome
	sessionsOpen  prometheus.Gauge
	commands      *prometheus.CounterVec // command
	logins        *prometheus.CounterVec // result
	sentBytes     prometheus.Counter
	upstreamTime  *prometheus.HistogramVec // command
	upstreamError *prometheus.CounterVec   // kind

	limiterRefusals *prometheus.CounterVec // limit
	oauthRefreshes  *prometheus.CounterVec // result

	deletes            *prometheus.CounterVec   // policy, result
	replays            *prometheus.CounterVec   // result
	uidvalidityChanges prometheus.Counter       //
	rematched          *prometheus.CounterVec   // result
	storeTime          *prometheus.HistogramVec // op
	locksHeld          prometheus.Gauge
	loggedIn           prometheus.Gauge

	completions           *prometheus.CounterVec // result (complete.go)
	completedFingerprints prometheus.Counter

	warmReuses prometheus.Counter     // warm.go
	warmMisses *prometheus.CounterVec // reason
	warmHeld   prometheus.Gauge
}

// newMetrics registers popbridge's metrics, the Go runtime's and the
// process's on a registry of their own (not the global one, so that tests
// and several servers in one process stay apart).
func newMetrics() (*metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &metrics{
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popbridge_pop3_sessions_total",
			Help: "POP3 sessions ended, by outcome (quit, quit-failed, dropped, timeout, auth-failed, refused, ...).",
		}, []string{"outcome"}),
		sessionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "popbridge_pop3_sessions_open",
			Help: "POP3 connections open now.",
		}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popbridge_pop3_commands_total",
			Help: "POP3 commands received, by command (unknown for anything else).",
		}, []string{"command"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popbridge_pop3_logins_total",
			Help: "POP3 login attempts, by result: ok, bad_credentials, login_delay, in_use, unavailable, refused.",
		}, []string{"result"}),
		sentBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "popbridge_pop3_sent_bytes_total",
			Help: "Octets of messages sent to POP3 clients by RETR and TOP.",
		}),
		upstreamTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "popbridge_upstream_command_duration_seconds",
			Help:    "Time of upstream IMAP operations, by operation (dial, login, select, fetch, search, store, expunge, move, ...).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"command"}),
		upstreamError: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popbridge_upstream_errors_total",
			Help: "Failed upstream IMAP operations, by kind: temporary, auth, permanent, gone.",
		}, []string{"kind"}),
		limiterRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popbridge_limiter_refusals_total",
			Help: "Connections, logins and sessions refused by [limits], by limit: connections, connections_per_ip, login_failures_ip, login_failures_account, sessions_per_account.",
		}, []string{"limit"}),
		oauthRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "popbridge_oauth_refreshes_total",
			Help: "Refreshes of enrolled accounts' OAuth grants this instance made, by result: ok, reconsent (the grant is gone: the account must be enrolled again), error.",
		}, []string{"result"}),
	}
	m.deletes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "popbridge_deleted_messages_total",
		Help: "Messages a client deleted (DELE, then QUIT), by delete policy (move, expunge, flag, hide) and result: ok (done upstream), refused (the upstream or the configuration refused it; nothing deleted), failed (not confirmed; retried at the next login).",
	}, []string{"policy", "result"})
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "popbridge_pending_updates_replayed_total",
		Help: "UPDATEs left pending by an earlier session and replayed at a login, by result: done, retried (failed again, kept for the next login), dropped (refused or out of attempts; its messages stay).",
	}, []string{"result"})
	m.uidvalidityChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "popbridge_uidvalidity_changes_total",
		Help: "Mailbox records whose upstream UIDVALIDITY changed, found at a login's sync.",
	})
	m.rematched = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "popbridge_uidvalidity_rematched_messages_total",
		Help: "Messages re-matched after a UIDVALIDITY change, by result: matched (kept their UIDL), new (a new UIDL), ambiguous (could not be told apart; a new UIDL), gone (in the record, no longer upstream).",
	}, []string{"result"})
	m.storeTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "popbridge_store_operation_duration_seconds",
		Help:    "Time of state store operations, by operation: load_mailbox, mailbox_version, apply_mailbox, load_client, apply_client, lock, lock_update, rename_mailbox.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"op"})
	m.locksHeld = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "popbridge_maildrop_locks_held",
		Help: "Maildrop locks (one per account and device in session) this instance holds now.",
	})
	m.loggedIn = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "popbridge_pop3_sessions_logged_in",
		Help: "POP3 sessions past their login (TRANSACTION state, or logging in upstream) now.",
	})
	m.completions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "popbridge_fingerprint_completions_total",
		Help: "Background completions of the fingerprints of a mailbox record listed cheaply at a first poll, by how they ended: done, uidvalidity (the upstream UIDVALIDITY changed; stopped), stopped (an error or shutdown; a later login goes on).",
	}, []string{"result"})
	m.completedFingerprints = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "popbridge_fingerprints_completed_total",
		Help: "Fingerprints of messages stored after their first listing (in the background, or a slice at a login when the connection budget is full).",
	})
	for _, r := range []string{"ok", "reconsent", "error"} {
		m.oauthRefreshes.WithLabelValues(r)
	}
	for _, r := range []string{"done", "uidvalidity", "stopped"} {
		m.completions.WithLabelValues(r)
	}
	reg.MustRegister(m.sessions, m.sessionsOpen, m.commands, m.logins, m.sentBytes, m.upstreamTime, m.upstreamError, m.limiterRefusals,
		m.oauthRefreshes, m.deletes, m.replays, m.uidvalidityChanges, m.rematched, m.storeTime, m.locksHeld, m.loggedIn,
		m.completions, m.completedFingerprints)
	m.registerWarm(reg)
	return m, reg
}

var _ pop3.Observer = (*metrics)(nil)

// SessionStarted implements pop3.Observer.
func (m *metrics) SessionStarted() { m.sessionsOpen.Inc() }

// SessionEnded implements pop3.Observer.
func (m *metrics) SessionEnded(s pop3.SessionSummary) {
	m.sessionsOpen.Dec()
	m.sessions.WithLabelValues(s.Outcome).Inc()
	m.sentBytes.Add(float64(s.BytesOut))
}

// Command implements pop3.Observer.
func (m *metrics) Command(name string) { m.commands.WithLabelValues(name).Inc() }

// loginResults names the results of pop3.Observer.Login for the metric.
var loginResults = map[string]string{
	"ok":                "ok",
	pop3.CodeAuth:       "bad_credentials",
	pop3.CodeLoginDelay: "login_delay",
	pop3.CodeInUse:      "in_use",
	pop3.CodeSysTemp:    "unavailable",
	pop3.CodeSysPerm:    "refused",
}

// Login implements pop3.Observer.
func (m *metrics) Login(result string) {
	r, ok := loginResults[result]
	if !ok {
		r = "refused"
	}
	m.logins.WithLabelValues(r).Inc()
}

// observeUpstream is upstream.Config.Observe.
func (m *metrics) observeUpstream(op string, took time.Duration, err error) {
	m.upstreamTime.WithLabelValues(op).Observe(took.Seconds())
	if err != nil {
		m.upstreamError.WithLabelValues(upstream.KindOf(err).String()).Inc()
	}
}

// oauthRefresh counts one refresh of an enrolled account's grant.
func (m *metrics) oauthRefresh(result string) { m.oauthRefreshes.WithLabelValues(result).Inc() }

// The methods below may be called on a nil *metrics (a Bridge made without
// a Server): they count nothing then.

// timeStore starts timing a store operation; the function it returns
// observes it.
func (m *metrics) timeStore(op string) func() {
	if m == nil {
		return func() {}
	}
	start := time.Now()
	return func() { m.storeTime.WithLabelValues(op).Observe(time.Since(start).Seconds()) }
}

// deleted counts n messages deleted with policy, by result.
func (m *metrics) deleted(policy Policy, result string, n int) {
	if m == nil || n == 0 {
		return
	}
	m.deletes.WithLabelValues(string(policy), result).Add(float64(n))
}

// replayed counts a replayed pending UPDATE by result.
func (m *metrics) replayed(result string) {
	if m != nil {
		m.replays.WithLabelValues(result).Inc()
	}
}

// uidvalidityChanged counts a UIDVALIDITY change and its re-match.
func (m *metrics) uidvalidityChanged(s state.RematchStats) {
	if m == nil {
		return
	}
	m.uidvalidityChanges.Inc()
	m.rematched.WithLabelValues("matched").Add(float64(s.Matched))
	m.rematched.WithLabelValues("new").Add(float64(s.New))
	m.rematched.WithLabelValues("ambiguous").Add(float64(s.Ambiguous))
	m.rematched.WithLabelValues("gone").Add(float64(s.Gone))
}

// completed counts fingerprints stored by a completion, and, when result
// is set, a background completion that ended so.
func (m *metrics) completed(result string, fingerprints int) {
	if m == nil {
		return
	}
	m.completedFingerprints.Add(float64(fingerprints))
	if result != "" {
		m.completions.WithLabelValues(result).Inc()
	}
}

// lockTaken counts a maildrop lock taken and returns its release, which
// uncounts it once however often it is called.
func (m *metrics) lockTaken(release func()) func() {
	if m == nil {
		return release
	}
	m.locksHeld.Inc()
	var once sync.Once
	return func() {
		once.Do(m.locksHeld.Dec)
		release()
	}
}

// sessionLoggedIn counts a session past its login; the function it returns
// uncounts it once.
func (m *metrics) sessionLoggedIn() func() {
	if m == nil {
		return func() {}
	}
	m.loggedIn.Inc()
	var once sync.Once
	return func() { once.Do(m.loggedIn.Dec) }
}
