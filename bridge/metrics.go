package bridge

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/popbridge/popbridge/pop3"
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
	for _, r := range []string{"ok", "reconsent", "error"} {
		m.oauthRefreshes.WithLabelValues(r)
	}
	reg.MustRegister(m.sessions, m.sessionsOpen, m.commands, m.logins, m.sentBytes, m.upstreamTime, m.upstreamError, m.limiterRefusals, m.oauthRefreshes)
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
