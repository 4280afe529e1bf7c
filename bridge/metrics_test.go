package bridge

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// TestMetricsCountSessions runs scripted sessions and reads the metrics
// back: the counts are exact, and no label and no value holds a user name
// or a password.
func TestMetricsCountSessions(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	mem.Append("INBOX", message("m.1", "first", "one\r\n"))
	mem.Append("INBOX", message("m.2", "second", "two\r\nlines\r\n"))
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	e := newEnv(t, up)
	m := e.srv.metrics

	// 1: a wrong password, then the right one; STAT, RETR, TOP, DELE, QUIT.
	c := dialPOP(t, e.addr)
	c.ok("USER %s", up.user+"#metrics")
	if r := c.cmd("PASS wrong-password"); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Fatalf("wrong password: %q", r)
	}
	c.login(up.user+"#metrics", up.pass)
	c.ok("STAT")
	body := c.retr(1)
	c.ok("TOP 2 0")
	top := c.multi()
	c.ok("DELE 1")
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("QUIT: %q", q)
	}
	// 2: not POP3 at all.
	c = dialPOP(t, e.addr)
	c.send("GET / HTTP/1.1")
	c.line()
	c.drop()
	// 3: the maildrop of session 1's device is free again; a second device
	// drops the connection in TRANSACTION.
	c = dialPOP(t, e.addr)
	c.login(up.user+"#other", up.pass)
	c.drop()

	// Sessions are counted when they end: wait for the last one.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.sessionsOpen) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"sessions open", testutil.ToFloat64(m.sessionsOpen), 0},
		{"sessions quit", testutil.ToFloat64(m.sessions.WithLabelValues("quit")), 1},
		{"sessions closed", testutil.ToFloat64(m.sessions.WithLabelValues("closed")), 1},
		{"sessions dropped", testutil.ToFloat64(m.sessions.WithLabelValues("dropped")), 1},
		{"logins ok", testutil.ToFloat64(m.logins.WithLabelValues("ok")), 2},
		{"logins bad_credentials", testutil.ToFloat64(m.logins.WithLabelValues("bad_credentials")), 1},
		{"USER", testutil.ToFloat64(m.commands.WithLabelValues("USER")), 3},
		{"PASS", testutil.ToFloat64(m.commands.WithLabelValues("PASS")), 3},
		{"STAT", testutil.ToFloat64(m.commands.WithLabelValues("STAT")), 1},
		{"RETR", testutil.ToFloat64(m.commands.WithLabelValues("RETR")), 1},
		{"TOP", testutil.ToFloat64(m.commands.WithLabelValues("TOP")), 1},
		{"DELE", testutil.ToFloat64(m.commands.WithLabelValues("DELE")), 1},
		{"QUIT", testutil.ToFloat64(m.commands.WithLabelValues("QUIT")), 1},
		{"unknown", testutil.ToFloat64(m.commands.WithLabelValues("unknown")), 1},
		{"sent bytes", testutil.ToFloat64(m.sentBytes), float64(len(body) + len(top))},
		{"upstream auth errors", testutil.ToFloat64(m.upstreamError.WithLabelValues("auth")), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Three logins reached the upstream: three dials, three LOGINs.
	for _, op := range []string{"dial", "login"} {
		n := histogramCount(t, m, op)
		if n != 3 {
			t.Errorf("upstream %s observed %d times, want 3", op, n)
		}
	}

	// Nothing exported names the user, the device or the password.
	families, err := e.srv.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				all.WriteString(l.GetName() + "=" + l.GetValue() + "\n")
			}
		}
	}
	for _, secret := range []string{up.user, "metrics", "other", up.pass, "wrong-password"} {
		if strings.Contains(all.String(), secret) {
			t.Errorf("a metric label holds %q", secret)
		}
	}
}

// histogramCount returns how many observations the upstream histogram has
// for op.
func histogramCount(t *testing.T, m *metrics, op string) uint64 {
	t.Helper()
	return observations(t, m.upstreamTime, op)
}

// observations returns how many observations h holds for the label value.
func observations(t *testing.T, h *prometheus.HistogramVec, label string) uint64 {
	t.Helper()
	o, err := h.GetMetricWithLabelValues(label)
	if err != nil {
		t.Fatal(err)
	}
	out := &dto.Metric{}
	if err := o.(prometheus.Metric).Write(out); err != nil {
		t.Fatal(err)
	}
	return out.GetHistogram().GetSampleCount()
}

// TestMetricsCountRefusals: a refusal by [limits] is counted by the limit
// that refused, and the login as the client saw it.
func TestMetricsCountRefusals(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	e := newEnv(t, up, func(c *Config) { c.Limits.MaxSessionsPerAccount = 1 })
	m := e.srv.metrics
	first := dialPOP(t, e.addr)
	first.login(up.user+"#one", up.pass)
	c := dialPOP(t, e.addr)
	c.ok("USER %s", up.user+"#two")
	if r := c.cmd("PASS %s", up.pass); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Fatalf("second session of the account: %q", r)
	}
	c.quit()
	first.quit()
	if got := testutil.ToFloat64(m.limiterRefusals.WithLabelValues("sessions_per_account")); got != 1 {
		t.Errorf("refusals by sessions_per_account = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.logins.WithLabelValues("in_use")); got != 1 {
		t.Errorf("logins in_use = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(m.limiterRefusals); got != 1 {
		t.Errorf("%d limits counted refusals, want 1", got)
	}
}
