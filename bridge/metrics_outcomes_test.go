package bridge

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
)

// TestMetricsCountOutcomes scripts sessions that delete, replay pending
// UPDATEs (one finished, one dropped), meet a UIDVALIDITY change and a
// refused deletion, and reads the metrics back: every count is exact, the
// gauges of maildrop locks and logged-in sessions follow the sessions, the
// store's operations are timed, and the /metrics text names no user, no
// device, no password and no message.
func TestMetricsCountOutcomes(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, id := range []string{"m.1", "m.2", "m.3"} {
		mem.AppendAt("INBOX", message(id, "subject-"+id, "body of "+id+"\r\n"), date)
	}
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	e := newEnv(t, up, func(c *Config) { c.Admin.Listen = "127.0.0.1:0" })
	m := e.srv.metrics
	mbox := MailboxKey(DefaultUpstreamName, asciiLower(up.user), "INBOX")

	// 1: device a deletes message 1 (moved to Trash).
	c := e.session("alpha")
	if got := testutil.ToFloat64(m.locksHeld); got != 1 {
		t.Errorf("maildrop locks held during a session = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.loggedIn); got != 1 {
		t.Errorf("sessions logged in during a session = %v, want 1", got)
	}
	c.ok("DELE 1")
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("QUIT: %q", q)
	}

	// 2: pending UPDATEs planted for devices b (can be finished) and c
	// (its target does not exist: refused, dropped).
	rec, err := e.st.LoadMailbox(t.Context(), mbox)
	if err != nil || len(rec.Entries) != 2 {
		t.Fatalf("record after session 1: %+v %v", rec, err)
	}
	plant := func(device, target string, en state.Entry) {
		p := &state.Pending{Policy: string(PolicyMove), Target: target, UIDValidity: rec.UIDValidity,
			UIDs: []uint32{en.UID}, UIDLs: []string{en.UIDL}, Fingerprints: []string{en.Fingerprint}, Digests: []string{en.Digest}, Created: time.Now()}
		if err := e.st.ApplyClient(t.Context(), state.ClientKey{Mailbox: mbox, Client: device}, state.ClientChange{SetPending: p}); err != nil {
			t.Fatal(err)
		}
	}
	plant("bravo", "Trash", rec.Entries[0])
	plant("charlie", "No-Such-Mailbox", rec.Entries[1])
	for _, d := range []string{"bravo", "charlie"} {
		c := e.session(d)
		c.quit()
	}
	if n := len(mem.Messages("INBOX")); n != 1 {
		t.Fatalf("INBOX holds %d messages after the replays, want 1", n)
	}

	// 3: INBOX is made anew (a new UIDVALIDITY) with message 3 again and a
	// new one: one matched, one new.
	mem.Admin().Recreate("INBOX")
	mem.AppendAt("INBOX", message("m.3", "subject-m.3", "body of m.3\r\n"), date)
	mem.AppendAt("INBOX", message("m.4", "subject-m.4", "body of m.4\r\n"), date)
	c = e.session("alpha")
	c.quit()

	// 4: another server, without UIDPLUS, refuses the expunge policy.
	mem2 := imaptest.NewMemServer(t, imaptest.WithCaps(imap.CapIMAP4rev1))
	mem2.Append("INBOX", message("m.5", "subject-m.5", "body\r\n"))
	up2 := &upstreamEnv{name: "memserver", addr: mem2.Addr, user: mem2.User, pass: mem2.Pass, box: mem2, mem: mem2}
	e2 := newEnv(t, up2, func(c *Config) { c.Delete.Policy = PolicyExpunge })
	c = e2.session("delta")
	c.ok("DELE 1")
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/PERM]") {
		t.Fatalf("QUIT of expunge without UIDPLUS: %q", q)
	}
	m2 := e2.srv.metrics

	waitGauge(t, m.sessionsOpen, 0)
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"deleted move ok", testutil.ToFloat64(m.deletes.WithLabelValues("move", "ok")), 1},
		{"deleted (all series)", float64(testutil.CollectAndCount(m.deletes)), 1},
		{"replays done", testutil.ToFloat64(m.replays.WithLabelValues("done")), 1},
		{"replays dropped", testutil.ToFloat64(m.replays.WithLabelValues("dropped")), 1},
		{"replays (all series)", float64(testutil.CollectAndCount(m.replays)), 2},
		{"uidvalidity changes", testutil.ToFloat64(m.uidvalidityChanges), 1},
		{"rematched matched", testutil.ToFloat64(m.rematched.WithLabelValues("matched")), 1},
		{"rematched new", testutil.ToFloat64(m.rematched.WithLabelValues("new")), 1},
		{"rematched ambiguous", testutil.ToFloat64(m.rematched.WithLabelValues("ambiguous")), 0},
		{"rematched gone", testutil.ToFloat64(m.rematched.WithLabelValues("gone")), 0},
		{"locks held after", testutil.ToFloat64(m.locksHeld), 0},
		{"logged in after", testutil.ToFloat64(m.loggedIn), 0},
		{"second server: deleted expunge refused", testutil.ToFloat64(m2.deletes.WithLabelValues("expunge", "refused")), 1},
		{"second server: deleted (all series)", float64(testutil.CollectAndCount(m2.deletes)), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	// Four logins on the first server: four maildrop locks taken, four
	// client records read; every UPDATE wrote its client record.
	for op, want := range map[string]uint64{"lock": 4} {
		if got := storeCount(t, m, op); got != want {
			t.Errorf("store %s timed %d times, want %d", op, got, want)
		}
	}
	for _, op := range []string{"load_client", "apply_client", "load_mailbox", "apply_mailbox", "lock_update"} {
		if storeCount(t, m, op) == 0 {
			t.Errorf("store %s never timed", op)
		}
	}

	// The /metrics text names nothing a client chose or sent.
	resp, err := http.Get("http://" + e.srv.AdminAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(text), "popbridge_deleted_messages_total{policy=\"move\",result=\"ok\"} 1") {
		t.Errorf("/metrics lacks the deleted messages:\n%s", text)
	}
	for _, secret := range []string{up.user, up.pass, "alpha", "bravo", "charlie", "No-Such-Mailbox", "subject-", "m.3@", mbox} {
		if strings.Contains(string(text), secret) {
			t.Errorf("/metrics holds %q", secret)
		}
	}
}

// waitGauge waits until g reads want: sessions are counted as they end.
func waitGauge(t *testing.T, g prometheus.Gauge, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(g) != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// storeCount returns how many store operations op the histogram holds.
func storeCount(t *testing.T, m *metrics, op string) uint64 {
	t.Helper()
	return observations(t, m.storeTime, op)
}
