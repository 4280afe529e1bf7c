package bridge

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/faultproxy"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/popclient"
	"github.com/popbridge/popbridge/state"
)

// Fault injection (docs/reliability.md, "Faults"): popbridge talks to its
// upstream through a faultproxy that cuts (RST or FIN) or stalls every
// connection at a chosen step. After each fault the fault is lifted and
// the test checks that no message was lost, none was deleted that was not
// DELE'd + QUIT, no UIDL changed, and the next session works.

// faultTimeout is upstream.timeout in these tests: a stall must end in
// [SYS/TEMP] within a small multiple of it, never hang.
const faultTimeout = 2 * time.Second

// faultSlack is what a stalled step may take beyond its timeouts (a loaded
// CI machine, the race detector).
const faultSlack = 3 * time.Second

// faultTotals are the figures docs/reliability.md reports.
type faultTotals struct {
	scenarios, sessions, faults, lost atomic.Int64
}

// fx is one fault scenario: an upstream account, a faultproxy in front of
// it and popbridge behind the proxy, with the account's state before the
// fault.
type fx struct {
	t      *testing.T
	up     *upstreamEnv // direct access to the account (not through the proxy)
	p      *faultproxy.Proxy
	e      *env
	policy string
	tot    *faultTotals

	before   []imaptest.Message // INBOX before the fault
	baseline []listing          // what a session listed before the fault
	appended [][]byte           // appended after the baseline
	kicks    int                // faults injected outside the proxy
}

// bigMessage is large enough that a RETR can be cut in its middle.
func bigMessage() []byte {
	var b bytes.Buffer
	b.Write(message("big", "big message", ""))
	for i := 0; b.Len() < 300<<10; i++ {
		if i%50 == 0 {
			b.WriteString(".a line that starts with a dot\r\n")
		}
		fmt.Fprintf(&b, "line %06d of the big message, some filler text to make it longer\r\n", i)
	}
	return b.Bytes()
}

// newFx seeds the account with four small messages, a big one and one
// marked \Deleted by someone else, starts the proxy and popbridge, and
// takes the baseline listing through a clean session.
func newFx(t *testing.T, up *upstreamEnv, policy string, tot *faultTotals) *fx {
	t.Helper()
	seed(up, 4)
	up.box.Append("INBOX", bigMessage())
	up.box.Append("INBOX", message("other", "someone else's", "x\r\n"), imap.FlagDeleted)
	var p *faultproxy.Proxy
	e := startBridge(t, up, withFaultProxy(&p), withConfig(func(c *Config) {
		c.Upstream.Timeout = faultTimeout
		c.Delete.Policy = Policy(policy)
	}))
	f := &fx{t: t, up: up, p: p, e: e, policy: policy, tot: tot}
	tot.scenarios.Add(1)
	t.Cleanup(func() {
		tot.faults.Add(int64(p.Faults() + f.kicks))
		t.Log(p.Report())
		// Invariant 2 over every command popbridge sent, on any server.
		bare := regexp.MustCompile(`(?i)^conn\d+: \S+ (EXPUNGE|CLOSE)\s*$`)
		for _, c := range p.Commands() {
			if bare.MatchString(c) {
				t.Errorf("popbridge sent a bare EXPUNGE or CLOSE: %q", c)
			}
		}
	})
	f.before = up.box.Messages("INBOX")
	c := f.session("")
	f.baseline = c.list()
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Fatalf("baseline QUIT = %q", q)
	}
	if len(f.baseline) != len(f.before) || len(f.before) != 6 {
		t.Fatalf("baseline lists %d messages, the upstream holds %d", len(f.baseline), len(f.before))
	}
	for i, l := range f.baseline {
		if l.size != int64(len(f.before[i].Raw)) {
			t.Fatalf("baseline LIST %d = %d octets, upstream %d", i+1, l.size, len(f.before[i].Raw))
		}
	}
	return f
}

// session logs in as device through popbridge (retrying [IN-USE] for a
// few seconds) and counts it.
func (f *fx) session(device string) *popConn {
	f.t.Helper()
	f.tot.sessions.Add(1)
	return f.e.session(device)
}

// login sends USER and PASS on a new connection and returns the answer to
// PASS and how long it took.
func (f *fx) login(device string) (*popConn, string, time.Duration) {
	f.t.Helper()
	f.tot.sessions.Add(1)
	c := dialPOP(f.t, f.e.addr)
	user := f.up.user
	if device != "" {
		user += "#" + device
	}
	c.ok("USER %s", user)
	start := time.Now()
	r := c.cmd("PASS %s", f.up.pass)
	return c, r, time.Since(start)
}

// timed sends a command and returns its status line and how long it took.
func timed(c *popConn, format string, args ...any) (string, time.Duration) {
	c.t.Helper()
	start := time.Now()
	r := c.cmd(format, args...)
	return r, time.Since(start)
}

// lift ends every fault: rules disarmed, stall released, connections
// accepted again.
func (f *fx) lift() {
	f.p.Disarm()
	f.p.Release()
	f.p.Refuse(false)
}

// within fails the test when a step took longer than its bound.
func (f *fx) within(what string, took, bound time.Duration) {
	f.t.Helper()
	if took > bound {
		f.t.Errorf("%s took %v, more than %v: a fault must end in an error, not a hang", what, took, bound)
	}
}

func msgID(raw []byte) string {
	for _, l := range strings.Split(string(raw), "\r\n") {
		if v, ok := strings.CutPrefix(l, "Message-ID: "); ok {
			return v
		}
		if l == "" {
			break
		}
	}
	return ""
}

// policyFlags are the flags the flag policy sets (DefaultConfig).
var policyFlags = []string{`\seen`, `$pop3deleted`}

// verify lifts the fault and checks the account after it. deleted are the
// baseline message numbers that device DELE'd and then sent QUIT for: the
// intent was recorded, so they must be gone (as the policy says) once that
// device has logged in again, and nothing else may have changed.
func (f *fx) verify(device string, deleted ...int) {
	t := f.t
	t.Helper()
	f.lift()
	gone := map[int]bool{}
	for _, n := range deleted {
		gone[n] = true
	}
	removes := f.policy == PolicyMove || f.policy == PolicyExpunge

	// The next session works: it lists the same UIDLs (minus what it
	// deleted, plus new mail), retrieves exact bytes and quits.
	c := f.session(device)
	got := c.list()
	var want []listing
	for i, l := range f.baseline {
		if !gone[i+1] {
			want = append(want, listing{n: len(want) + 1, size: l.size, uidl: l.uidl})
		}
	}
	known := map[string]bool{}
	for _, l := range f.baseline {
		known[l.uidl] = true
	}
	for _, raw := range f.appended {
		want = append(want, listing{n: len(want) + 1, size: int64(len(raw))})
	}
	if len(got) != len(want) {
		t.Fatalf("after the fault device %q lists %d messages, want %d: %v", device, len(got), len(want), got)
	}
	seenUIDL := map[string]bool{}
	for i := range got {
		if seenUIDL[got[i].uidl] {
			t.Errorf("UIDL %s listed twice", got[i].uidl)
		}
		seenUIDL[got[i].uidl] = true
		if want[i].uidl == "" { // new mail: a new UIDL
			if known[got[i].uidl] {
				t.Errorf("new message %d got the old UIDL %s", i+1, got[i].uidl)
			}
			want[i].uidl = got[i].uidl
		}
		if got[i] != want[i] {
			t.Errorf("after the fault message %d is %+v, want %+v (UIDLs must not change)", i+1, got[i], want[i])
		}
	}
	for i := range got {
		raw := c.retr(i + 1)
		if i >= len(got)-len(f.appended) {
			if exp := f.appended[i-(len(got)-len(f.appended))]; !bytes.Equal(raw, exp) {
				t.Errorf("RETR %d after the fault: %d octets differ from the %d appended", i+1, len(raw), len(exp))
			}
			continue
		}
		if int64(len(raw)) != got[i].size {
			t.Errorf("RETR %d after the fault sent %d octets, LIST says %d", i+1, len(raw), got[i].size)
		}
	}
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Errorf("QUIT after the fault = %q", q)
	}
	if cl, err := f.e.st.LoadClient(context.Background(), state.ClientKey{Mailbox: f.e.srv.Bridge.mailboxKey(f.up.user), Client: device}); err != nil || cl.Pending != nil {
		t.Errorf("after the next session the intent is still pending: %+v %v", cl, err)
	}

	// The upstream: exactly the deleted messages went, as the policy says,
	// and nothing else changed.
	inbox := map[uint32]imaptest.Message{}
	for _, m := range f.up.box.Messages("INBOX") {
		inbox[m.UID] = m
	}
	trash := map[string]imaptest.Message{}
	for _, m := range f.up.box.Messages("Trash") {
		trash[string(m.Raw)] = m
	}
	lost := 0
	for i, m := range f.before {
		now, in := inbox[m.UID]
		_, inTrash := trash[string(m.Raw)]
		switch {
		case gone[i+1] && removes:
			if in {
				t.Errorf("message %d (%s) was DELE'd and QUIT but is still in INBOX", i+1, msgID(m.Raw))
			}
			if f.policy == PolicyMove && !inTrash {
				t.Errorf("message %d (%s) was moved but is not in Trash", i+1, msgID(m.Raw))
				lost++
			}
		case !in:
			t.Errorf("message %d (%s) is gone from INBOX but was not DELE'd + QUIT", i+1, msgID(m.Raw))
			if !inTrash {
				lost++
			}
		default:
			if !bytes.Equal(now.Raw, m.Raw) {
				t.Errorf("message %d changed its bytes", i+1)
			}
			wantFlags := flagString(m)
			if gone[i+1] && f.policy == PolicyFlag {
				wantFlags = flagString(imaptest.Message{Flags: append(append([]imap.Flag(nil), m.Flags...), imap.FlagSeen, "$POP3Deleted")})
			}
			if got := flagString(now); got != wantFlags {
				t.Errorf("message %d flags %q, want %q", i+1, got, wantFlags)
			}
		}
		if inTrash && !(gone[i+1] && f.policy == PolicyMove) {
			t.Errorf("message %d (%s) is in Trash but was not DELE'd + QUIT under the move policy", i+1, msgID(m.Raw))
		}
	}
	if len(trash) != len(deleted) && f.policy == PolicyMove {
		t.Errorf("Trash holds %d messages, want the %d deleted", len(trash), len(deleted))
	}
	for _, m := range trash {
		if m.HasFlag(imap.FlagDeleted) {
			t.Errorf("a message in Trash has \\Deleted")
		}
	}
	if n := len(inbox); n != len(f.before)+len(f.appended)-map[bool]int{true: len(deleted)}[removes] {
		t.Errorf("INBOX holds %d messages", n)
	}
	f.tot.lost.Add(int64(lost))

	// Another device sees what the policy table says, with the same UIDLs.
	if device != "watcher" {
		c = f.session("watcher")
		other := c.list()
		c.quit()
		var exp []string
		for i, l := range f.baseline {
			if !(gone[i+1] && removes) {
				exp = append(exp, l.uidl)
			}
		}
		var gotU []string
		for _, l := range other[:len(other)-len(f.appended)] {
			gotU = append(gotU, l.uidl)
		}
		if strings.Join(gotU, " ") != strings.Join(exp, " ") {
			t.Errorf("another device sees %v, want %v", gotU, exp)
		}
	}
}

// pendingIntent returns the pending UPDATE of device.
func (f *fx) pendingIntent(device string) *state.Pending {
	cl, err := f.e.st.LoadClient(context.Background(), state.ClientKey{Mailbox: f.e.srv.Bridge.mailboxKey(f.up.user), Client: device})
	if err != nil {
		f.t.Fatal(err)
	}
	return cl.Pending
}

// faultGate bounds how many fault scenarios run at once. They mostly wait
// for timeouts, so they run side by side, beyond go test's -parallel (which
// defaults to the number of CPUs); each scenario still has its own
// upstream account, proxy and popbridge.
var faultGate = make(chan struct{}, 16)

// faultGo runs t.Run(name, fn) in a goroutine; wg waits for it.
func faultGo(t *testing.T, wg *sync.WaitGroup, name string, fn func(t *testing.T)) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.Run(name, fn)
	}()
}

// faultUpstreams is forEachUpstream with the two upstreams side by side:
// a fresh MemServer with a \Trash mailbox, and a fresh Dovecot account
// when POPBRIDGE_TEST_DOVECOT_ADDR is set.
func faultUpstreams(t *testing.T, fn func(t *testing.T, up *upstreamEnv)) {
	var wg sync.WaitGroup
	faultGo(t, &wg, "memserver", func(t *testing.T) {
		faultGate <- struct{}{}
		defer func() { <-faultGate }()
		mem := imaptest.NewMemServer(t)
		mem.Create("Trash", imap.MailboxAttrTrash)
		fn(t, &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem})
	})
	faultGo(t, &wg, "dovecot", func(t *testing.T) {
		addr := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR")
		domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
		if addr == "" || domain == "" {
			t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
		}
		faultGate <- struct{}{}
		defer func() { <-faultGate }()
		user := freshUser(domain)
		fn(t, &upstreamEnv{name: "dovecot", addr: addr, user: user, pass: "pass", box: imaptest.NewAdmin(t, addr, user, "pass")})
	})
	wg.Wait()
}

var faultActions = []faultproxy.Action{faultproxy.Reset, faultproxy.Stall}

// TestFaults runs every fault scenario against the memory server and, when
// one is set up, Dovecot, and logs the totals.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection takes a while")
	}
	var tot faultTotals
	start := time.Now()
	t.Run("all", func(t *testing.T) {
		var wg sync.WaitGroup
		defer wg.Wait()
		for _, step := range []struct {
			name    string
			pattern string
			prepare func(f *fx)
		}{
			{name: "login", pattern: " LOGIN "},
			{name: "select", pattern: " SELECT "},
			// New mail makes the login list the mailbox (UID FETCH n:*).
			{name: "listing", pattern: " UID FETCH ", prepare: func(f *fx) {
				for i := range 2 {
					raw := message(fmt.Sprintf("new%d", i), "new", "new mail\r\n")
					f.up.box.Append("INBOX", raw)
					f.appended = append(f.appended, raw)
				}
			}},
		} {
			for _, act := range faultActions {
				faultGo(t, &wg, step.name+"/"+act.String(), func(t *testing.T) {
					faultUpstreams(t, func(t *testing.T, up *upstreamEnv) {
						f := newFx(t, up, PolicyMove, &tot)
						if step.prepare != nil {
							step.prepare(f)
						}
						r := f.p.On(faultproxy.ToServer, step.pattern, act)
						c, resp, took := f.login("")
						if !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
							t.Errorf("login with the upstream cut at %q: %q, want -ERR [SYS/TEMP]", step.pattern, resp)
						}
						if _, ok := r.Event(); !ok {
							t.Errorf("the fault did not fire")
						}
						f.within("login", took, faultTimeout+faultSlack)
						c.drop()
						f.verify("")
					})
				})
			}
		}

		for _, act := range []faultproxy.Action{faultproxy.Reset, faultproxy.Close, faultproxy.Stall} {
			faultGo(t, &wg, "retr-midway/"+act.String(), func(t *testing.T) {
				faultUpstreams(t, func(t *testing.T, up *upstreamEnv) { retrMidway(t, up, act, &tot) })
			})
		}
		for _, act := range faultActions {
			faultGo(t, &wg, "retr-before-body/"+act.String(), func(t *testing.T) {
				faultUpstreams(t, func(t *testing.T, up *upstreamEnv) { retrBeforeBody(t, up, act, &tot) })
			})
		}

		// UPDATE: the intent is stored, then the upstream is cut or
		// stalled at the command that carries it out.
		for _, u := range []struct {
			name, policy string
			dir          faultproxy.Dir
			pattern      string
			// what the upstream holds when the fault hits: the flag is set
			// (between the flag and the expunge), the command was done
			// (answer lost), or nothing was done.
			flagged, done bool
		}{
			{name: "expunge-between-flag-and-expunge", policy: PolicyExpunge, dir: faultproxy.ToServer, pattern: " UID EXPUNGE ", flagged: true},
			{name: "expunge-answer-lost", policy: PolicyExpunge, dir: faultproxy.ToClient, pattern: " EXPUNGE\r\n", done: true},
			{name: "move", policy: PolicyMove, dir: faultproxy.ToServer, pattern: " UID MOVE "},
			{name: "move-answer-lost", policy: PolicyMove, dir: faultproxy.ToClient, pattern: "[COPYUID ", done: true},
			{name: "flag", policy: PolicyFlag, dir: faultproxy.ToServer, pattern: " UID STORE "},
		} {
			for _, mode := range []string{"reset-transient", "reset-down", "stall"} {
				faultGo(t, &wg, "update-"+u.name+"/"+mode, func(t *testing.T) {
					faultUpstreams(t, func(t *testing.T, up *upstreamEnv) {
						f := newFx(t, up, u.policy, &tot)
						c := f.session("laptop")
						c.list()
						c.ok("DELE 1")
						c.ok("DELE 3")
						var r *faultproxy.Rule
						switch mode {
						case "reset-transient":
							r = f.p.On(u.dir, u.pattern, faultproxy.Reset)
						case "reset-down":
							r = f.p.On(u.dir, u.pattern, faultproxy.Reset).AndRefuse()
						case "stall":
							r = f.p.On(u.dir, u.pattern, faultproxy.Stall)
						}
						q, took := timed(c, "QUIT")
						if _, ok := r.Event(); !ok {
							t.Fatalf("the fault did not fire; QUIT = %q", q)
						}
						f.within("QUIT", took, 2*faultTimeout+faultSlack)
						if mode == "reset-transient" {
							// popbridge reconnects once and finishes the
							// UPDATE (it is idempotent; a move retried
							// after its answer was lost first finds the
							// messages gone and sends no second MOVE).
							if !strings.HasPrefix(q, "+OK") {
								t.Errorf("QUIT with one connection cut = %q, want +OK after a reconnect", q)
							}
						} else {
							if !strings.HasPrefix(q, "-ERR [SYS/TEMP]") {
								t.Errorf("QUIT with the upstream %s = %q, want -ERR [SYS/TEMP]", mode, q)
							}
							// The intent is stored, and the upstream is
							// where the fault left it.
							if p := f.pendingIntent("laptop"); p == nil || len(p.UIDLs) != 2 || p.UIDLs[0] != f.baseline[0].uidl || p.UIDLs[1] != f.baseline[2].uidl {
								t.Errorf("pending intent = %+v, want the UIDLs of messages 1 and 3", p)
							}
							f.assertUpdateLeft(u.flagged, u.done)
						}
						f.verify("laptop", 1, 3)
					})
				})
			}
		}

		faultGo(t, &wg, "flag-change-during-listing", func(t *testing.T) {
			faultUpstreams(t, func(t *testing.T, up *upstreamEnv) { flagDuringListing(t, up, &tot) })
		})

		for _, how := range []string{"reset", "close", "down", "kick"} {
			faultGo(t, &wg, "upstream-restart/"+how, func(t *testing.T) {
				faultUpstreams(t, func(t *testing.T, up *upstreamEnv) { upstreamRestart(t, up, how, &tot) })
			})
		}
	})
	t.Logf("fault totals: %d scenarios, %d POP3 sessions, %d faults injected, %d messages lost, in %v",
		tot.scenarios.Load(), tot.sessions.Load(), tot.faults.Load(), tot.lost.Load(), time.Since(start).Round(time.Millisecond))
	if tot.lost.Load() != 0 {
		t.Errorf("%d messages lost", tot.lost.Load())
	}
}

// assertUpdateLeft checks the upstream after an UPDATE that failed: with
// flagged, messages 1 and 3 carry \Deleted but are still there; with
// done, they already left INBOX; otherwise INBOX is untouched.
func (f *fx) assertUpdateLeft(flagged, done bool) {
	t := f.t
	t.Helper()
	inbox := map[uint32]imaptest.Message{}
	for _, m := range f.up.box.Messages("INBOX") {
		inbox[m.UID] = m
	}
	for i, m := range f.before {
		now, in := inbox[m.UID]
		target := i == 0 || i == 2
		switch {
		case target && done:
			if in {
				t.Errorf("message %d is still in INBOX, but the fault was after the server's answer", i+1)
			}
		case !in:
			t.Errorf("message %d left INBOX before the UPDATE was carried out", i+1)
		case target && flagged:
			if !now.HasFlag(imap.FlagDeleted) {
				t.Errorf("message %d lacks \\Deleted: the fault was meant to hit between the flag and the expunge", i+1)
			}
		default:
			if flagString(now) != flagString(m) {
				t.Errorf("message %d flags changed to %q before the UPDATE was carried out", i+1, flagString(now))
			}
		}
	}
}

// retrMidway cuts or stalls the upstream after 100 000 octets of the big
// message's literal: the POP3 client must see the connection end without
// the terminating dot (invariant 5).
func retrMidway(t *testing.T, up *upstreamEnv, act faultproxy.Action, tot *faultTotals) {
	f := newFx(t, up, PolicyMove, tot)
	big := f.before[4].Raw
	c := f.session("")
	c.ok("DELE 1") // never QUIT: must not be deleted
	r := f.p.After(faultproxy.ToClient, "BODY[] {", 100000, act)
	start := time.Now()
	status := c.ok("RETR 5")
	if status != fmt.Sprintf("+OK %d octets", len(big)) {
		t.Errorf("RETR status %q", status)
	}
	c.conn.SetReadDeadline(time.Now().Add(2*faultTimeout + faultSlack + 10*time.Second))
	rest, err := io.ReadAll(c.r)
	took := time.Since(start)
	if err != nil {
		t.Errorf("the partial RETR did not end with a close: %v after %v", err, took)
	}
	if _, ok := r.Event(); !ok {
		t.Fatalf("the fault did not fire")
	}
	f.within("the partial RETR", took, faultTimeout+faultSlack)
	body, derr := popclient.ReadMulti(bufio.NewReader(bytes.NewReader(rest)), func() {})
	if derr == nil {
		t.Errorf("a RETR cut midway ended with the terminating dot (%d octets)", len(body))
	}
	if bytes.HasSuffix(rest, []byte("\r\n.\r\n")) || bytes.Contains(rest, []byte("\r\n.\r\n")) {
		t.Errorf("the partial data holds a terminating dot line")
	}
	if len(body) == 0 || len(body) >= len(big) || !bytes.HasPrefix(big, body) {
		t.Errorf("the partial RETR sent %d octets, not a proper prefix of the %d-octet message", len(body), len(big))
	}
	t.Logf("RETR cut after %d of %d octets (%s), connection closed after %v", len(body), len(big), act, took)
	f.verify("")
}

// retrBeforeBody cuts the upstream when RETR's UID FETCH goes out, before
// any octet of the message: popbridge reconnects once and sends the whole
// message; when the upstream stays stalled it answers -ERR [SYS/TEMP] and
// the session goes on.
func retrBeforeBody(t *testing.T, up *upstreamEnv, act faultproxy.Action, tot *faultTotals) {
	f := newFx(t, up, PolicyMove, tot)
	c := f.session("")
	r := f.p.On(faultproxy.ToServer, " BODY.PEEK[]", act)
	resp, took := timed(c, "RETR 2")
	if _, ok := r.Event(); !ok {
		t.Fatalf("the fault did not fire")
	}
	if act == faultproxy.Stall {
		if !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
			t.Errorf("RETR with the upstream stalled = %q, want -ERR [SYS/TEMP]", resp)
		}
		f.within("RETR", took, 2*faultTimeout+faultSlack)
		f.lift()
		resp = c.cmd("RETR 2") // the session goes on and reconnects
	}
	if !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("RETR after a reconnect = %q", resp)
	}
	if got := c.multi(); !bytes.Equal(got, f.before[1].Raw) {
		t.Errorf("RETR after a reconnect: %d octets differ from the %d stored", len(got), len(f.before[1].Raw))
	}
	c.ok("DELE 2")
	if q := c.quit(); !strings.HasPrefix(q, "+OK") {
		t.Errorf("QUIT = %q", q)
	}
	f.verify("", 2)
}

// upstreamRestart drops every upstream connection while three sessions
// are open: "reset" and "close" cut them in the proxy (what popbridge sees
// when the server restarts), "kick" has Dovecot end them itself (doveadm
// kick: BYE), "down" cuts them and keeps the upstream away for a while.
// An open session's RETR and QUIT reconnect, or fail with -ERR and change
// nothing; the next sessions work.
func upstreamRestart(t *testing.T, up *upstreamEnv, how string, tot *faultTotals) {
	if how == "kick" && (up.mem != nil || os.Getenv("POPBRIDGE_TEST_DOVECOT_CONF") == "") {
		t.Skip("doveadm kick needs Dovecot")
	}
	f := newFx(t, up, PolicyMove, tot)
	a, b, c := f.session("a"), f.session("b"), f.session("c")
	for _, s := range []*popConn{a, b, c} {
		s.list()
	}
	switch how {
	case "reset":
		f.p.Cut(faultproxy.Reset)
	case "close":
		f.p.Cut(faultproxy.Close)
	case "down":
		f.p.Refuse(true)
		f.p.Cut(faultproxy.Reset)
	case "kick":
		out, err := exec.Command("doveadm", "-c", os.Getenv("POPBRIDGE_TEST_DOVECOT_CONF"), "kick", up.user).CombinedOutput()
		if err != nil {
			t.Fatalf("doveadm kick: %v\n%s", err, out)
		}
		f.kicks++
		t.Logf("doveadm kick: %s", strings.TrimSpace(string(out)))
		time.Sleep(200 * time.Millisecond) // let the BYEs arrive
		// The kick ended the test's own helper connection too.
		up.box = imaptest.NewAdmin(t, up.addr, up.user, up.pass)
	}
	// a: RETR in the open session.
	resp, took := timed(a, "RETR 2")
	f.within("RETR", took, 2*faultTimeout+faultSlack)
	if how == "down" {
		if !strings.HasPrefix(resp, "-ERR [SYS/TEMP]") {
			t.Errorf("RETR with the upstream down = %q, want -ERR [SYS/TEMP]", resp)
		}
	} else if !strings.HasPrefix(resp, "+OK") {
		t.Errorf("RETR after the upstream restarted = %q, want a reconnect", resp)
	} else if got := a.multi(); !bytes.Equal(got, f.before[1].Raw) {
		t.Errorf("RETR after a reconnect: %d octets differ from the %d stored", len(got), len(f.before[1].Raw))
	}
	// b: DELE 3 and QUIT.
	b.ok("DELE 3")
	q, took := timed(b, "QUIT")
	f.within("QUIT", took, 2*faultTimeout+faultSlack)
	if how == "down" {
		if !strings.HasPrefix(q, "-ERR [SYS/TEMP]") {
			t.Errorf("QUIT with the upstream down = %q, want -ERR [SYS/TEMP]", q)
		}
		if len(f.up.box.Messages("INBOX")) != len(f.before) {
			t.Errorf("the upstream changed while it was down")
		}
	} else if !strings.HasPrefix(q, "+OK") {
		t.Errorf("QUIT after the upstream restarted = %q, want +OK after a reconnect", q)
	}
	// c: drops its connection with a DELE: nothing happens.
	c.ok("DELE 4")
	c.drop()
	if how == "down" {
		f.lift()
		// The session that got -ERR goes on once the upstream is back.
		a.ok("RETR 2")
		if got := a.multi(); !bytes.Equal(got, f.before[1].Raw) {
			t.Errorf("RETR after the upstream came back: %d octets differ", len(got))
		}
	}
	if q := a.quit(); !strings.HasPrefix(q, "+OK") {
		t.Errorf("QUIT of the session that lived through the restart = %q", q)
	}
	if how == "down" && f.pendingIntent("b") == nil {
		// The QUIT failed before the intent was stored (finding Trash
		// needs the upstream): nothing may be deleted.
		t.Logf("QUIT failed before the intent was stored: nothing is deleted")
		f.verify("b")
		return
	}
	f.verify("b", 3)
}

// flagDuringListing holds the login's listing (UID FETCH n:*) in the proxy
// while another IMAP session flags one of the new messages, then lets it
// go: a server may answer with an unsolicited FETCH (UID, FLAGS) for that
// message first, which imapclient hands to the listing in place of the
// real answer. The login must still succeed and list every message.
func flagDuringListing(t *testing.T, up *upstreamEnv, tot *faultTotals) {
	f := newFx(t, up, PolicyMove, tot)
	var uids []uint32
	for i := range 3 {
		raw := message(fmt.Sprintf("flagged%d", i), "new", "new mail\r\n")
		uids = append(uids, f.up.box.Append("INBOX", raw))
		f.appended = append(f.appended, raw)
	}
	r := f.p.On(faultproxy.ToServer, " UID FETCH ", faultproxy.Stall)
	type result struct {
		c    *popConn
		resp string
	}
	done := make(chan result, 1)
	go func() {
		c := dialPOP(t, f.e.addr)
		c.send("USER %s", f.up.user)
		c.line()
		c.send("PASS %s", f.up.pass)
		done <- result{c, c.line()}
	}()
	if !r.Wait(10 * time.Second) {
		t.Fatal("the listing never started")
	}
	f.up.box.AddFlags("INBOX", uids[1], imap.FlagFlagged)
	time.Sleep(100 * time.Millisecond) // let the server queue the update
	f.p.Release()
	res := <-done
	f.tot.sessions.Add(1)
	if !strings.HasPrefix(res.resp, "+OK") {
		t.Fatalf("login while another session flagged a message = %q", res.resp)
	}
	if got := res.c.list(); len(got) != len(f.baseline)+len(uids) {
		t.Errorf("the login lists %d messages, want %d", len(got), len(f.baseline)+len(uids))
	}
	res.c.quit()
	// verify compares flags with the state before the fault: the flag set
	// meanwhile is the IMAP client's, not popbridge's.
	f.before = f.up.box.Messages("INBOX")[:len(f.before)]
	f.verify("")
	for _, m := range f.up.box.Messages("INBOX") {
		if m.UID == uids[1] && !m.HasFlag(imap.FlagFlagged) {
			t.Errorf("the IMAP client's \\Flagged is gone")
		}
	}
}

// scriptedIMAP is imaptest's scripted server with an unsolicited FETCH
// "before", "after" or "rolling" (see imaptest.Unsolicited).
func scriptedIMAP(t *testing.T, unsolicited string) (addr string, bodies []string) {
	s := imaptest.NewScripted(t, imaptest.Unsolicited(unsolicited))
	return s.Addr, s.Bodies
}

// TestUnsolicitedFetchDuringListing: the login's listing meets an
// unsolicited FETCH that took the place of a message's answer; popbridge
// asks again instead of failing the login, and lists both messages.
func TestUnsolicitedFetchDuringListing(t *testing.T) {
	for _, when := range []string{"before", "after", "rolling", "queued"} {
		t.Run(when, func(t *testing.T) { testUnsolicitedFetch(t, when) })
	}
}

// TestLateFlagUpdateOfExpunged: the listing has no answer for a message
// that another session expunged meanwhile, and then meets that message's
// flag update; once UID SEARCH finds it gone, the login succeeds without it.
func TestLateFlagUpdateOfExpunged(t *testing.T) {
	addr, bodies := scriptedIMAP(t, "late")
	e := newEnv(t, &upstreamEnv{name: "scripted", addr: addr, user: "alice", pass: "pass"})
	c := dialPOP(t, e.addr)
	c.ok("USER alice")
	if r := c.cmd("PASS pass"); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login with a late flag update of an expunged message = %q", r)
	}
	l := c.list()
	if len(l) != 1 || l[0].uidl != "0000000200000007" {
		t.Fatalf("listing %+v, want only UID 2", l)
	}
	if got := string(c.retr(1)); got != bodies[1] {
		t.Errorf("RETR 1 = %q, want %q", got, bodies[1])
	}
	c.quit()

	// The same, but the message is still there: its answer was lost, and
	// a listing without it would drop it from the record, so the login
	// fails for now.
	addr, _ = scriptedIMAP(t, "late-alive")
	e = newEnv(t, &upstreamEnv{name: "scripted", addr: addr, user: "alice", pass: "pass"})
	c = dialPOP(t, e.addr)
	c.ok("USER alice")
	if r := c.cmd("PASS pass"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Errorf("login when the message without an answer is still there = %q, want -ERR [SYS/TEMP]", r)
	}
	c.drop()
}

// testUnsolicitedFetch logs in to a listing that meets an unsolicited
// FETCH before or after the first message's answer.
func testUnsolicitedFetch(t *testing.T, when string) {
	addr, bodies := scriptedIMAP(t, when)
	e := newEnv(t, &upstreamEnv{name: "scripted", addr: addr, user: "alice", pass: "pass"})
	c := dialPOP(t, e.addr)
	c.ok("USER alice")
	if r := c.cmd("PASS pass"); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("login with an unsolicited FETCH in the listing = %q", r)
	}
	l := c.list()
	if len(l) != len(bodies) {
		t.Fatalf("listing %+v, want %d messages", l, len(bodies))
	}
	for i, m := range l {
		if want := fmt.Sprintf("%08x00000007", i+1); m.uidl != want {
			t.Errorf("message %d: UIDL %s, want %s", i+1, m.uidl, want)
		}
	}
	for i, b := range bodies {
		if got := string(c.retr(i + 1)); got != b {
			t.Errorf("RETR %d = %q, want %q", i+1, got, b)
		}
	}
	c.quit()
}
