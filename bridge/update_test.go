package bridge

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/faultproxy"
	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
	"github.com/popbridge/popbridge/upstream"
)

// moveUpstream is an upstream for the move-policy tests: what popbridge
// dials (perhaps through a proxy that hides MOVE) and the account it
// inspects directly.
type moveUpstream struct {
	up   *upstreamEnv // up.addr is what popbridge dials
	move bool         // popbridge sees MOVE
}

// forEachMoveUpstream runs fn against the memory server and Dovecot, each
// once with MOVE and once without it (the COPY + \Deleted + UID EXPUNGE
// fallback): the memory server then announces IMAP4rev1 and UIDPLUS only,
// Dovecot is reached through a proxy that removes MOVE from its
// capabilities.
func forEachMoveUpstream(t *testing.T, fn func(t *testing.T, mu *moveUpstream)) {
	for _, move := range []bool{false, true} {
		suffix := "-nomove"
		if move {
			suffix = "-move"
		}
		t.Run("memserver"+suffix, func(t *testing.T) {
			var opts []imaptest.Option
			if !move {
				opts = append(opts, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus))
			}
			mem := imaptest.NewMemServer(t, opts...)
			mem.Create("Trash", imap.MailboxAttrTrash)
			fn(t, &moveUpstream{up: &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}, move: move})
		})
		t.Run("dovecot"+suffix, func(t *testing.T) {
			addr := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR")
			domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
			if addr == "" || domain == "" {
				t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
			}
			user := freshUser(domain)
			up := &upstreamEnv{name: "dovecot", addr: addr, user: user, pass: "pass", box: imaptest.NewAdmin(t, addr, user, "pass")}
			if !move {
				up.addr = imaptest.HideCaps(t, addr, "MOVE")
			}
			fn(t, &moveUpstream{up: up, move: move})
		})
	}
}

// gateMoves holds the UID COPY or UID MOVE commands that reach a memory
// server until two have arrived, or for at most a moment after the first:
// two devices that move at the same time then overlap for sure. Without a
// memory server it does nothing. The returned function waits for the gate
// to open.
func gateMoves(mu *moveUpstream) (wait func()) {
	mem := mu.up.mem
	if mem == nil {
		return func() {}
	}
	kind, name := "COPY", "UID COPY"
	if mu.move {
		kind, name = "MOVE", "UID MOVE"
	}
	before := len(mem.CommandsNamed(name))
	release := mem.Block(kind)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer release()
		var first time.Time
		for {
			n := len(mem.CommandsNamed(name)) - before
			if n >= 2 {
				return
			}
			if n == 1 && first.IsZero() {
				first = time.Now()
			}
			if !first.IsZero() && time.Since(first) > 300*time.Millisecond {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() { <-done }
}

// quitRaw sends QUIT and reads its answer, from any goroutine.
func quitRaw(c *popConn) (string, error) {
	c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.conn.Write([]byte("QUIT\r\n")); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	return strings.TrimSuffix(line, "\r\n"), err
}

// countID counts the messages of msgs whose Message-ID is <id@example.com>.
func countID(msgs []imaptest.Message, id string) int {
	n := 0
	for _, m := range msgs {
		if bytes.Contains(m.Raw, []byte("Message-ID: <"+id+"@example.com>")) {
			n++
		}
	}
	return n
}

// moveRaces runs rounds in which two sessions (opened by open, one per
// device) DELE the same message and send QUIT at the same moment, and checks
// that the message ends up in Trash exactly once, gone from INBOX, and that
// both QUITs are answered +OK.
func moveRaces(t *testing.T, mu *moveUpstream, rounds int, open func(device string) *popConn) {
	t.Helper()
	box := mu.up.box
	dups := 0
	for round := range rounds {
		id := fmt.Sprintf("race%d-%d", round, time.Now().UnixNano())
		box.Append("INBOX", message(id, "race "+fmt.Sprint(round), "raced\r\n"))
		a, b := open("a"), open("b")
		for _, c := range []*popConn{a, b} {
			if st := c.ok("STAT"); !strings.HasPrefix(st, "+OK 1 ") {
				t.Fatalf("round %d: STAT %q, want one message", round, st)
			}
			c.ok("DELE 1")
		}
		wait := gateMoves(mu)
		var wg sync.WaitGroup
		answers := make([]string, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, c := range []*popConn{a, b} {
			wg.Go(func() {
				<-start
				answers[i], errs[i] = quitRaw(c)
			})
		}
		close(start)
		wg.Wait()
		wait()
		inTrash, inInbox := countID(box.Messages("Trash"), id), countID(box.Messages("INBOX"), id)
		if inTrash > 1 {
			dups++
		}
		if inTrash != 1 || inInbox != 0 {
			t.Errorf("round %d: the message is %d times in Trash and %d times in INBOX, want 1 and 0 (QUITs %q %q)", round, inTrash, inInbox, answers, errs)
		}
		for i := range answers {
			if errs[i] != nil || !strings.HasPrefix(answers[i], "+OK") {
				t.Errorf("round %d: device %d QUIT = %q %v, want +OK", round, i, answers[i], errs[i])
			}
		}
	}
	t.Logf("%d of %d rounds left a duplicate in Trash", dups, rounds)
}

// TestConcurrentMoveOneCopy: two devices of one account DELE the same
// message and QUIT at the same moment, 20 times, with and without MOVE:
// every time the message is in Trash exactly once. The UPDATEs of one
// upstream mailbox run one after the other under the store's update lock,
// and the second sees that the message is gone and moves nothing.
func TestConcurrentMoveOneCopy(t *testing.T) {
	forEachMoveUpstream(t, func(t *testing.T, mu *moveUpstream) {
		e := newEnv(t, mu.up, func(c *Config) { c.Delete.Policy = PolicyMove })
		moveRaces(t, mu, 20, e.session)
	})
}

// TestConcurrentMoveOneCopyPostgres: the same with the two devices on two
// popbridge instances that share one PostgreSQL store (the update lock is
// an advisory lock there), on a memory server without MOVE.
func TestConcurrentMoveOneCopyPostgres(t *testing.T) {
	dsn := pgtest.Schema(t)
	mem := imaptest.NewMemServer(t, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus))
	mem.Create("Trash", imap.MailboxAttrTrash)
	mu := &moveUpstream{up: &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}}
	cfg := DefaultConfig()
	cfg.Server.Listen = "127.0.0.1:0"
	cfg.Upstream.Address = mem.Addr
	cfg.Upstream.Security = upstream.SecurityNone
	cfg.Upstream.Timeout = 10 * time.Second
	cfg.Auth.AllowInsecureAuth = true
	cfg.Delete.Policy = PolicyMove
	cfg.State.Driver, cfg.State.DSN = "postgres", dsn
	instances := map[string]string{"a": startInstance(t, cfg, dsn), "b": startInstance(t, cfg, dsn)}
	moveRaces(t, mu, 20, func(device string) *popConn {
		c := dialPOP(t, instances[device])
		c.login(mem.User+"#"+device, mem.Pass)
		return c
	})
}

// TestMoveFallbackCutAfterCopy: without MOVE, the move policy copies,
// flags and expunges. When the upstream connection is cut after the COPY
// was answered (at the UID STORE that follows), the retry must not copy
// again: popbridge recorded what the COPY copied (COPYUID) in the stored
// intent before it went on, and the retry only flags and expunges those.
// transient: one cut, the retry on a new connection finishes within QUIT.
// down: the upstream stays down, QUIT fails with the intent (and what was
// copied) stored, and the next login finishes it.
func TestMoveFallbackCutAfterCopy(t *testing.T) {
	forEachMoveUpstream(t, func(t *testing.T, mu *moveUpstream) {
		if mu.move {
			t.Skip("MOVE has no fallback to cut")
		}
		for _, down := range []bool{false, true} {
			name := "transient"
			if down {
				name = "down"
			}
			t.Run(name, func(t *testing.T) {
				box := mu.up.box
				box.Reset("INBOX")
				box.Reset("Trash")
				p := faultproxy.New(t, mu.up.addr)
				up := *mu.up
				up.addr = p.Addr
				e := newEnv(t, &up, func(c *Config) {
					c.Delete.Policy = PolicyMove
					c.Upstream.Timeout = 3 * time.Second
				})
				ids := []string{name + "-1", name + "-2", name + "-3"}
				for _, id := range ids {
					box.Append("INBOX", message(id, id, "cut after copy\r\n"))
				}
				c := e.session("laptop")
				uidls := c.uidls()
				c.ok("DELE 1")
				c.ok("DELE 3")
				r := p.On(faultproxy.ToServer, " UID STORE ", faultproxy.Reset)
				if down {
					r.AndRefuse()
				}
				answer := c.quit()
				if !r.Wait(5 * time.Second) {
					t.Fatalf("the fault never fired: %s", p.Report())
				}
				if !p.Saw(" UID COPY ") {
					t.Fatalf("no UID COPY went out: %s", p.Report())
				}
				if down {
					if !strings.HasPrefix(answer, "-ERR [SYS/TEMP]") {
						t.Errorf("QUIT with the upstream down = %q, want -ERR [SYS/TEMP]", answer)
					}
					cl, err := e.st.LoadClient(t.Context(), state.ClientKey{Mailbox: MailboxKey(DefaultUpstreamName, up.user, "INBOX"), Client: "laptop"})
					if err != nil || cl.Pending == nil {
						t.Fatalf("no intent stored after the failed QUIT: %+v %v", cl, err)
					}
					if want := []string{uidls[0], uidls[2]}; !slices.Equal(cl.Pending.Copied, want) {
						t.Errorf("the stored intent records %v as copied, want %v (the COPYUID of the COPY)", cl.Pending.Copied, want)
					}
					if n := countID(box.Messages("INBOX"), ids[0]) + countID(box.Messages("INBOX"), ids[2]); n != 2 {
						t.Errorf("with the upstream down, %d of the two messages are still in INBOX, want 2 (not expunged yet)", n)
					}
					p.Refuse(false)
					c = e.session("laptop")
					if got := c.uidls(); !slices.Equal(got, []string{uidls[1]}) {
						t.Errorf("after the replay the device lists %v, want %v", got, uidls[1:2])
					}
					if r := c.quit(); !strings.HasPrefix(r, "+OK") {
						t.Errorf("QUIT after the replay: %q", r)
					}
				} else if !strings.HasPrefix(answer, "+OK") {
					t.Errorf("QUIT after one cut = %q, want +OK (one reconnect)", answer)
				}
				inbox, trash := box.Messages("INBOX"), box.Messages("Trash")
				for i, id := range ids {
					wantTrash, wantInbox := 1, 0
					if i == 1 {
						wantTrash, wantInbox = 0, 1
					}
					if got := countID(trash, id); got != wantTrash {
						t.Errorf("%s is %d times in Trash, want %d", id, got, wantTrash)
					}
					if got := countID(inbox, id); got != wantInbox {
						t.Errorf("%s is %d times in INBOX, want %d", id, got, wantInbox)
					}
				}
				for _, m := range inbox {
					if m.HasFlag(imap.FlagDeleted) {
						t.Errorf("INBOX UID %d is left \\Deleted", m.UID)
					}
				}
				cl, err := e.st.LoadClient(t.Context(), state.ClientKey{Mailbox: MailboxKey(DefaultUpstreamName, up.user, "INBOX"), Client: "laptop"})
				if err != nil || cl.Pending != nil {
					t.Errorf("an intent is still pending at the end: %+v %v", cl, err)
				}
			})
		}
	})
}
