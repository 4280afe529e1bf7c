package bridge

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/faultproxy"
	"github.com/popbridge/popbridge/internal/imaptest"
)

// Refused UPDATEs (docs/reliability.md, "Refused UPDATEs"): the upstream
// answers the QUIT-time UID EXPUNGE or UID MOVE with a NO. The client is
// told what happened with the right RFC 3206 code, the upstream is left as
// it was (a \Deleted popbridge set is taken back, one the user set stays),
// the device's next login works, and a pending UPDATE that keeps failing
// is dropped after a bound instead of failing every login.

// testClock is a clock the test moves; safe for concurrent use.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newObservedEnv is newEnv with popbridge's log kept in e.logs and, when
// clock is not nil, the bridge running on it.
func newObservedEnv(t *testing.T, up *upstreamEnv, clock *testClock, mutate ...func(*Config)) *env {
	t.Helper()
	opts := []envOpt{withConfig(mutate...), withObserver()}
	if clock != nil {
		opts = append(opts, withClock(clock.now))
	}
	return startBridge(t, up, opts...)
}

// TestRefusedUpdate: UID EXPUNGE or UID MOVE refused with a NO that says
// permission or quota, with a response code or (as Cyrus does) only in the
// text. QUIT answers -ERR [SYS/PERM] naming the cause; nothing changes
// upstream (the \Deleted popbridge set is removed, the one the user set on
// another DELE'd message stays); no UPDATE stays pending; the next login
// lists every message with its UIDL.
func TestRefusedUpdate(t *testing.T) {
	noperm := &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeNoPerm, Text: "Permission denied"}
	cyrusPerm := &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Permission denied"}
	overquota := &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeOverQuota, Text: "Quota exceeded (mailbox for user is full)"}
	cyrusQuota := &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Over quota"}
	for _, tc := range []struct {
		name, policy, cmd string
		err               *imap.Error
		want              string // in the QUIT answer, after -ERR [SYS/PERM]
	}{
		{"expunge/NOPERM", PolicyExpunge, "EXPUNGE", noperm, "permission denied"},
		{"expunge/no-code", PolicyExpunge, "EXPUNGE", cyrusPerm, "permission denied"},
		{"move/NOPERM", PolicyMove, "MOVE", noperm, "permission denied"},
		{"move/no-code", PolicyMove, "MOVE", cyrusPerm, "permission denied"},
		{"move/OVERQUOTA", PolicyMove, "MOVE", overquota, "over quota"},
		{"move/over-quota-text", PolicyMove, "MOVE", cyrusQuota, "over quota"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := memUpstream(t)
			seed(up, 3)
			// A message the user flagged \Deleted in an IMAP client.
			up.box.Append("INBOX", message("users", "user's deleted", "x\r\n"), imap.FlagDeleted)
			before := up.box.Messages("INBOX")
			e := newObservedEnv(t, up, nil, func(c *Config) { c.Delete.Policy = Policy(tc.policy) })

			c := e.session("")
			uidls := c.uidls()
			c.ok("DELE 1")
			c.ok("DELE 4")
			up.mem.Fail(tc.cmd, tc.err)
			q := c.quit()
			if !strings.HasPrefix(q, "-ERR [SYS/PERM] ") || !strings.Contains(strings.ToLower(q), tc.want) {
				t.Errorf("QUIT = %q, want -ERR [SYS/PERM] saying %q", q, tc.want)
			}
			if !strings.Contains(q, "nothing was deleted") {
				t.Errorf("QUIT = %q, want it to say that nothing was deleted", q)
			}

			after := up.box.Messages("INBOX")
			if len(after) != len(before) {
				t.Fatalf("the upstream holds %d messages, want the %d it had", len(after), len(before))
			}
			for i := range after {
				if after[i].UID != before[i].UID || flagString(after[i]) != flagString(before[i]) {
					t.Errorf("message %d: UID %d flags %q, want UID %d flags %q (as before the refused UPDATE)",
						i+1, after[i].UID, flagString(after[i]), before[i].UID, flagString(before[i]))
				}
			}
			if !after[3].HasFlag(imap.FlagDeleted) {
				t.Errorf("the \\Deleted the user set on message 4 was removed")
			}
			if n := len(up.box.Messages("Trash")); n != 0 {
				t.Errorf("Trash holds %d messages", n)
			}
			if p := pendingOf(t, e, up, ""); p != nil {
				t.Errorf("a refused UPDATE stays pending: %+v", p)
			}

			// The device logs in again and sees every message, even
			// while the upstream still refuses.
			c = e.session("")
			if got := c.uidls(); strings.Join(got, " ") != strings.Join(uidls, " ") {
				t.Errorf("the next login lists %v, want %v", got, uidls)
			}
			if q := c.quit(); !strings.HasPrefix(q, "+OK") {
				t.Errorf("QUIT without DELE = %q", q)
			}
			if up.mem != nil {
				for _, cmd := range up.mem.CommandsNamed("EXPUNGE", "CLOSE") {
					t.Errorf("popbridge sent %q", cmd.Line)
				}
			}
		})
	}
}

// TestPendingReplayBounded: an UPDATE the upstream keeps refusing with a
// temporary NO stays pending, and each login of the device works and lists
// the messages while the replay fails; the replay is dropped, with a log
// line, after maxReplayAttempts attempts or once it is maxReplayAge old.
// Nothing is deleted, and the \Deleted popbridge set is gone each time.
func TestPendingReplayBounded(t *testing.T) {
	for _, bound := range []string{"attempts", "age"} {
		t.Run(bound, func(t *testing.T) {
			up := memUpstream(t)
			seed(up, 3)
			clock := &testClock{t: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
			e := newObservedEnv(t, up, clock, func(c *Config) { c.Delete.Policy = PolicyExpunge })
			c := e.session("")
			uidls := c.uidls()
			c.ok("DELE 2")
			up.mem.Fail("EXPUNGE", imaptest.ErrUnavailable)
			if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP] ") {
				t.Fatalf("QUIT = %q, want -ERR [SYS/TEMP]", q)
			}
			if p := pendingOf(t, e, up, ""); p == nil || p.Attempts != 1 || !p.Created.Equal(clock.now()) {
				t.Fatalf("pending after QUIT = %+v, want one attempt, made now", p)
			}

			attempts := 1
			for {
				if bound == "age" {
					clock.advance(maxReplayAge / 2)
				}
				c = e.session("")
				if got := c.uidls(); strings.Join(got, " ") != strings.Join(uidls, " ") {
					t.Fatalf("login with a failing replay lists %v, want %v", got, uidls)
				}
				if q := c.quit(); !strings.HasPrefix(q, "+OK") {
					t.Fatalf("QUIT without DELE = %q", q)
				}
				attempts++
				p := pendingOf(t, e, up, "")
				if p == nil {
					break
				}
				if p.Attempts != attempts {
					t.Fatalf("after %d attempts the pending UPDATE counts %d", attempts, p.Attempts)
				}
				if attempts > maxReplayAttempts {
					t.Fatalf("still pending after %d attempts", attempts)
				}
			}
			switch bound {
			case "attempts":
				if attempts != maxReplayAttempts {
					t.Errorf("dropped after %d attempts, want %d", attempts, maxReplayAttempts)
				}
			case "age":
				if attempts != 3 {
					t.Errorf("dropped after %d attempts over %v, want at the first attempt %v old", attempts, time.Duration(attempts-1)*maxReplayAge/2, maxReplayAge)
				}
			}
			dropped := e.logs.FilterMessageSnippet("dropping a pending UPDATE").All()
			if len(dropped) != 1 {
				t.Fatalf("%d log lines about dropping the pending UPDATE, want 1", len(dropped))
			}
			f := dropped[0].ContextMap()
			if f["attempts"] != int64(attempts) || f["policy"] != PolicyExpunge || f["messages"] != int64(1) {
				t.Errorf("the log line says %v", f)
			}

			// Nothing was deleted and no \Deleted is left; once the upstream
			// works again, nothing is replayed.
			up.mem.Fail("EXPUNGE", nil)
			c = e.session("")
			if got := c.uidls(); len(got) != 3 {
				t.Errorf("after the drop the device lists %v", got)
			}
			c.quit()
			msgs := up.box.Messages("INBOX")
			if len(msgs) != 3 {
				t.Fatalf("the upstream holds %d messages, want 3", len(msgs))
			}
			for i, m := range msgs {
				if m.HasFlag(imap.FlagDeleted) {
					t.Errorf("message %d keeps the \\Deleted of a failed UID EXPUNGE", i+1)
				}
			}
		})
	}
}

// TestTemporaryFailureReplayed: the upstream connection is cut at UID
// EXPUNGE and the upstream stays down: QUIT answers -ERR [SYS/TEMP], the
// UPDATE stays pending, and the next login, once the upstream is back,
// finishes it.
func TestTemporaryFailureReplayed(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		seed(up, 3)
		p := faultproxy.New(t, up.addr)
		via := *up
		via.addr = p.Addr
		e := newEnv(t, &via, func(c *Config) {
			c.Delete.Policy = PolicyExpunge
			c.Upstream.Timeout = faultTimeout
		})
		c := e.session("")
		uidls := c.uidls()
		c.ok("DELE 2")
		r := p.On(faultproxy.ToServer, " UID EXPUNGE ", faultproxy.Reset).AndRefuse()
		if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP] ") {
			t.Errorf("QUIT with the upstream down = %q, want -ERR [SYS/TEMP]", q)
		}
		if _, ok := r.Event(); !ok {
			t.Fatal("the fault did not fire")
		}
		if pd := pendingOf(t, e, up, ""); pd == nil || len(pd.UIDLs) != 1 || pd.UIDLs[0] != uidls[1] {
			t.Fatalf("pending = %+v, want UIDL %s", pd, uidls[1])
		}
		p.Disarm()
		p.Refuse(false)
		c = e.session("")
		if got := c.uidls(); strings.Join(got, " ") != uidls[0]+" "+uidls[2] {
			t.Errorf("after the replay the device lists %v", got)
		}
		c.quit()
		assertSubjects(t, "INBOX", up.box.Messages("INBOX"), "message 1", "message 3")
		if pd := pendingOf(t, e, up, ""); pd != nil {
			t.Errorf("still pending after the replay: %+v", pd)
		}
	})
}

// TestPendingMergedAtQuit: while an UPDATE stays pending (its replay at
// login failed), the messages stay listed; a QUIT that deletes more in the
// meantime carries the old messages along in one intent, and the login
// after the upstream recovers finishes both.
func TestPendingMergedAtQuit(t *testing.T) {
	up := memUpstream(t)
	seed(up, 4)
	e := newObservedEnv(t, up, nil, func(c *Config) { c.Delete.Policy = PolicyExpunge })
	c := e.session("")
	uidls := c.uidls()
	c.ok("DELE 2")
	up.mem.Fail("EXPUNGE", imaptest.ErrUnavailable)
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP] ") {
		t.Fatalf("QUIT = %q", q)
	}
	c = e.session("")
	if got := c.uidls(); strings.Join(got, " ") != strings.Join(uidls, " ") {
		t.Fatalf("with the replay failing the device lists %v, want all of %v", got, uidls)
	}
	c.ok("DELE 3")
	if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP] ") {
		t.Fatalf("second QUIT = %q", q)
	}
	p := pendingOf(t, e, up, "")
	if p == nil || strings.Join(p.UIDLs, " ") != uidls[1]+" "+uidls[2] || p.Attempts != 1 {
		t.Fatalf("pending = %+v, want UIDLs %s %s with one attempt", p, uidls[1], uidls[2])
	}
	up.mem.Fail("EXPUNGE", nil)
	c = e.session("")
	if got := c.uidls(); strings.Join(got, " ") != uidls[0]+" "+uidls[3] {
		t.Errorf("after the replay the device lists %v", got)
	}
	c.quit()
	assertSubjects(t, "INBOX", up.box.Messages("INBOX"), "message 1", "message 4")
}
