package bridge

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The cold first poll: a large mailbox seen for the first time is listed
// with UID and RFC822.SIZE only, and the fingerprints are completed in the
// background (complete.go). The tests lower the size from which that
// happens (records.coldAt) so that a few messages do.

// coldMailbox is a mailbox of its own, so that it can be deleted and
// created again on any server (Dovecot cannot delete INBOX).
const coldMailbox = "Cold"

// coldGate holds the background completions while it is locked.
type coldGate struct{ sync.Mutex }

// withCold makes every sync of at least coldAt messages take the cheap
// listing, completions fetch batch UIDs at a time and start at once, and
// each completion wait for gate (when not nil) before it starts.
func withCold(coldAt, batch int, gate *coldGate) envOpt {
	return withTune(func(s *Server) {
		r := s.Bridge.records
		r.coldAt, r.batch, r.bg.delay = coldAt, batch, 0
		if gate != nil {
			r.bg.hold = func() { gate.Lock(); gate.Unlock() }
		}
	})
}

// coldMessages appends n messages to coldMailbox, among them (from n >= 3)
// a pair of twins, and returns them in their order.
func coldMessages(up *upstreamEnv, n int, tag string, date time.Time) [][]byte {
	var raws [][]byte
	for i := range n {
		raw := message(fmt.Sprintf("%s%d", tag, i), "cold "+tag, fmt.Sprintf("body %s %d\r\n", tag, i))
		if i == 1 || i == 2 {
			raw, _ = twins()
			if i == 2 {
				_, raw = twins()
			}
			raw = append([]byte(nil), raw...)
			raw = []byte(strings.Replace(string(raw), "<twin@", "<twin-"+tag+"@", 1))
		}
		up.box.AppendAt(coldMailbox, raw, date)
		raws = append(raws, raw)
	}
	return raws
}

// uidlsByBody returns the UIDL of each message of the session, by its
// bytes.
func uidlsByBody(c *popConn) map[string]string {
	c.t.Helper()
	out := map[string]string{}
	for _, l := range c.list() {
		out[string(c.retr(l.n))] = l.uidl
	}
	return out
}

// coldRecord is the mailbox record of up's account, from the store.
func coldRecord(t *testing.T, e *env) *state.Mailbox {
	t.Helper()
	m, err := e.st.LoadMailbox(context.Background(), e.srv.Bridge.mailboxKey(e.up.user))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestColdFirstPollListsCheaply: the first poll of a mailbox that counts
// as large sends the upstream exactly LOGIN, CAPABILITY, SELECT and one
// UID FETCH 1:* (UID RFC822.SIZE) before it answers PASS: no fingerprint
// (INTERNALDATE, Message-ID) and no digest. The completion, let go once
// the session has its list, then stores every fingerprint and digest, the
// same ones a foreground listing stores.
func TestColdFirstPollListsCheaply(t *testing.T) {
	up := memUpstream(t)
	up.box.Create(coldMailbox)
	date := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	coldMessages(up, 6, "c", date)
	var gate coldGate
	gate.Lock()
	e := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }), withCold(3, 2, &gate))
	up.mem.ResetCommands()
	c := e.session("")
	var got []string
	for _, cmd := range up.mem.Commands() {
		got = append(got, cmd.Name+" "+cmd.Args)
	}
	want := []string{"LOGIN " + strconv.Quote(up.user) + " " + strconv.Quote(up.pass), "CAPABILITY ", "SELECT " + strconv.Quote(coldMailbox), "UID FETCH 1:* (UID RFC822.SIZE)"}
	if !slices.Equal(got, want) {
		t.Errorf("upstream commands before +OK to PASS:\n got %q\nwant %q", got, want)
	}
	served := c.uidls()
	if len(served) != 6 {
		t.Fatalf("first poll: %d messages", len(served))
	}
	rec := coldRecord(t, e)
	if n := len(state.Unfingerprinted(rec)); n != 6 {
		t.Errorf("before the completion: %d entries without a fingerprint, want 6", n)
	}
	gate.Unlock()
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("QUIT = %q", q)
	}
	e.srv.Bridge.records.bg.wait()
	rec = coldRecord(t, e)
	if n := len(state.Unfingerprinted(rec)); n != 0 {
		t.Errorf("after the completion: %d entries without a fingerprint", n)
	}
	// The same mailbox synced in the foreground (a fresh state file, the
	// default coldAt) gives the same record.
	fg := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }))
	c = fg.session("")
	c.quit()
	want2 := coldRecord(t, fg)
	if len(rec.Entries) != len(want2.Entries) {
		t.Fatalf("completed record %d entries, foreground %d", len(rec.Entries), len(want2.Entries))
	}
	digests := 0
	for i, e := range rec.Entries {
		if f := want2.Entries[i]; e != f {
			t.Errorf("entry %d completed in the background %+v, listed in the foreground %+v", i, e, f)
		}
		if e.Digest != "" {
			digests++
		}
		if e.UIDL != served[i] {
			t.Errorf("entry %d has UIDL %s, served %s", i, e.UIDL, served[i])
		}
	}
	if digests != 2 {
		t.Errorf("%d entries with a digest, want the 2 twins", digests)
	}
}

// TestColdCompletionKeepsUIDLs: after the background completion, a
// UIDVALIDITY change (the mailbox re-created, its messages in reverse
// order) keeps every UIDL, the twins' included.
func TestColdCompletionKeepsUIDLs(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		up.box.Create(coldMailbox)
		date := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
		raws := coldMessages(up, 5, "k", date)
		e := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }), withCold(3, 2, nil))
		c := e.session("")
		before := uidlsByBody(c)
		c.quit()
		e.srv.Bridge.records.bg.wait()
		if n := len(state.Unfingerprinted(coldRecord(t, e))); n != 0 {
			t.Fatalf("after the completion: %d entries without a fingerprint", n)
		}
		oldUV := up.box.UIDValidity(coldMailbox)
		up.box.Recreate(coldMailbox)
		for i := len(raws) - 1; i >= 0; i-- {
			up.box.AppendAt(coldMailbox, raws[i], date)
		}
		if up.box.UIDValidity(coldMailbox) == oldUV {
			t.Fatal("Recreate kept the UIDVALIDITY")
		}
		c = e.session("")
		after := uidlsByBody(c)
		c.quit()
		if len(after) != len(before) {
			t.Fatalf("%d messages after the change, %d before", len(after), len(before))
		}
		for body, u := range before {
			if after[body] != u {
				t.Errorf("message %.40q: UIDL %s before the UIDVALIDITY change, %s after", body[strings.Index(body, "Message-ID"):], u, after[body])
			}
		}
	})
}

// TestColdWindow is the window of the background completion: the mailbox
// is completed once; then new mail, enough for the cheap listing, arrives
// and its completion is held; the UIDVALIDITY changes. The messages that
// had their fingerprints keep their UIDLs; the ones without get new UIDLs,
// none of them an old one. Let go afterwards, the completion (of the
// record as it now is) makes the next change keep every UIDL.
func TestColdWindow(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		up.box.Create(coldMailbox)
		date := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
		old := coldMessages(up, 4, "o", date)
		var gate coldGate
		e := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }), withCold(3, 2, &gate))
		c := e.session("")
		c.quit()
		e.srv.Bridge.records.bg.wait()

		gate.Lock()
		held := true
		defer func() {
			if held {
				gate.Unlock()
			}
		}()
		fresh := coldMessages(up, 4, "n", date.Add(time.Hour))
		c = e.session("")
		before := uidlsByBody(c)
		c.quit()
		if len(before) != 8 {
			t.Fatalf("%d messages before the change", len(before))
		}
		if n := len(state.Unfingerprinted(coldRecord(t, e))); n != 4 {
			t.Fatalf("%d entries without a fingerprint in the window, want the 4 new ones", n)
		}

		up.box.Recreate(coldMailbox)
		all := append(slices.Clone(fresh), old...)
		slices.Reverse(all)
		for _, raw := range all {
			up.box.AppendAt(coldMailbox, raw, date)
		}
		c = e.session("")
		after := uidlsByBody(c)
		c.quit()
		if len(after) != 8 {
			t.Fatalf("%d messages after the change", len(after))
		}
		oldUIDLs := map[string]bool{}
		for _, u := range before {
			oldUIDLs[u] = true
		}
		seen := map[string]bool{}
		for _, raw := range old {
			if u := after[string(raw)]; u != before[string(raw)] {
				t.Errorf("a fingerprinted message: UIDL %s before the change, %s after", before[string(raw)], u)
			}
		}
		for _, raw := range fresh {
			u := after[string(raw)]
			if oldUIDLs[u] {
				t.Errorf("a message without a fingerprint got the old UIDL %s (its own was %s)", u, before[string(raw)])
			}
		}
		for _, u := range after {
			if seen[u] {
				t.Errorf("UIDL %s served twice", u)
			}
			seen[u] = true
		}

		held = false
		gate.Unlock()
		e.srv.Bridge.records.bg.wait()
		// The held completion found the record of the new UIDVALIDITY
		// listed in full already; a session completes what is left.
		c = e.session("")
		c.quit()
		e.srv.Bridge.records.bg.wait()
		if n := len(state.Unfingerprinted(coldRecord(t, e))); n != 0 {
			t.Fatalf("%d entries without a fingerprint after the completion", n)
		}
		up.box.Recreate(coldMailbox)
		for _, raw := range all {
			up.box.AppendAt(coldMailbox, raw, date)
		}
		c = e.session("")
		again := uidlsByBody(c)
		c.quit()
		for body, u := range after {
			if again[body] != u {
				t.Errorf("after the completion: UIDL %s became %s at the next UIDVALIDITY change", u, again[body])
			}
		}
	})
}

// TestColdCompletionStopsAtShutdown: a completion whose FETCH hangs
// upstream neither holds the session's QUIT nor the server's Shutdown;
// it stores nothing it did not fetch, and the next login after the
// restart completes the record.
func TestColdCompletionStopsAtShutdown(t *testing.T) {
	up := memUpstream(t)
	up.box.Create(coldMailbox)
	coldMessages(up, 5, "s", time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC))
	var gate coldGate
	gate.Lock()
	e := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }), withCold(3, 2, &gate), withObserver())
	c := e.session("")
	if n := len(c.uidls()); n != 5 {
		t.Fatalf("%d messages", n)
	}
	release := up.mem.Block("FETCH")
	defer release()
	gate.Unlock()
	for deadline := time.Now().Add(10 * time.Second); len(up.mem.CommandsNamed("UID FETCH")) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the completion sent no UID FETCH")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("QUIT while the completion hangs = %q", q)
	}
	st, srv := e.st, e.srv
	e.keepStore = true
	e.stop() // fails the test if Shutdown does not end the completion
	srv.Bridge.records.bg.wait()
	if n := e.logs.FilterMessage("fingerprint completion stopped; a later login goes on with it").Len(); n != 1 {
		t.Errorf("%d log lines of the stopped completion, want 1", n)
	}
	m, err := st.LoadMailbox(context.Background(), srv.Bridge.mailboxKey(up.user))
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(state.Unfingerprinted(m)); n != 5 {
		t.Errorf("%d entries without a fingerprint after the cut completion, want 5", n)
	}
	release()
	e.keepStore = false
	e.start()
	c = e.session("")
	c.quit()
	e.srv.Bridge.records.bg.wait()
	if n := len(state.Unfingerprinted(coldRecord(t, e))); n != 0 {
		t.Errorf("%d entries without a fingerprint after the next login's completion", n)
	}
}

// TestColdCompletionWithinBudget: with upstream.max_connections_per_account
// = 1 the session holds the account's only connection, so no completion
// opens one of its own: each login completes one batch on the session's
// connection instead, and after enough logins every fingerprint and
// digest is stored. No login waits for a place or opens two connections.
func TestColdCompletionWithinBudget(t *testing.T) {
	up := memUpstream(t)
	up.box.Create(coldMailbox)
	coldMessages(up, 5, "b", time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC))
	e := startBridge(t, up, withConfig(func(c *Config) {
		c.Upstream.Mailbox = coldMailbox
		c.Upstream.MaxConnectionsPerAccount = 1
	}), withCold(3, 2, nil))
	for i, want := range []int{3, 1, 0} {
		up.mem.ResetCommands()
		c := e.session("")
		if n := len(c.uidls()); n != 5 {
			t.Fatalf("login %d: %d messages", i+1, n)
		}
		c.quit()
		e.srv.Bridge.records.bg.wait()
		if n := len(up.mem.CommandsNamed("LOGIN")); n != 1 {
			t.Errorf("login %d: %d upstream LOGINs, want the session's alone", i+1, n)
		}
		rec := coldRecord(t, e)
		if n := len(state.Unfingerprinted(rec)); n != want {
			t.Errorf("after login %d: %d entries without a fingerprint, want %d", i+1, n, want)
		}
		if want == 0 {
			if got := state.DigestsMissing(rec); len(got) != 0 {
				t.Errorf("after the last slice the twins %v have no digest", got)
			}
		}
	}
}

// TestColdCompletionTwoInstances: two instances on one PostgreSQL store
// complete the same mailbox at the same time (a session on each, their
// completions let go together). Their batches merge: the record ends up
// as a foreground listing stores it, every UIDL the one served.
func TestColdCompletionTwoInstances(t *testing.T) {
	dsn := pgtest.Schema(t)
	up := memUpstream(t)
	up.box.Create(coldMailbox)
	coldMessages(up, 9, "p", time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC))
	var gate coldGate
	gate.Lock()
	opts := []envOpt{withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }), withCold(3, 2, &gate), withPostgres(dsn)}
	a := startBridge(t, up, opts...)
	b := startBridge(t, up, opts...)
	ca := a.session("phone")
	served := ca.uidls()
	cb := b.session("laptop")
	if got := cb.uidls(); !slices.Equal(got, served) {
		t.Fatalf("instance b serves %v, instance a %v", got, served)
	}
	gate.Unlock()
	ca.quit()
	cb.quit()
	a.srv.Bridge.records.bg.wait()
	b.srv.Bridge.records.bg.wait()

	fg := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }))
	c := fg.session("")
	c.quit()
	want := coldRecord(t, fg)
	got := coldRecord(t, a)
	if len(got.Entries) != len(want.Entries) {
		t.Fatalf("completed record %d entries, foreground %d", len(got.Entries), len(want.Entries))
	}
	for i, e := range got.Entries {
		if e != want.Entries[i] {
			t.Errorf("entry %d completed by two instances %+v, listed in the foreground %+v", i, e, want.Entries[i])
		}
		if e.UIDL != served[i] {
			t.Errorf("entry %d has UIDL %s, served %s", i, e.UIDL, served[i])
		}
	}
}

// TestColdCompletionCounted: the background completion is counted in the
// metrics, by how it ended, with the fingerprints it stored.
func TestColdCompletionCounted(t *testing.T) {
	up := memUpstream(t)
	up.box.Create(coldMailbox)
	coldMessages(up, 5, "m", time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC))
	e := startBridge(t, up, withConfig(func(c *Config) { c.Upstream.Mailbox = coldMailbox }), withCold(3, 2, nil))
	c := e.session("")
	c.quit()
	e.srv.Bridge.records.bg.wait()
	m := e.srv.metrics
	if got := testutil.ToFloat64(m.completions.WithLabelValues("done")); got != 1 {
		t.Errorf("completions{result=done} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.completedFingerprints); got != 5 {
		t.Errorf("completed fingerprints = %v, want 5", got)
	}
	if got := testutil.ToFloat64(m.completions.WithLabelValues("stopped")); got != 0 {
		t.Errorf("completions{result=stopped} = %v, want 0", got)
	}
}
