package bridge

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/faultproxy"
	"github.com/popbridge/popbridge/state"
)

// Twins (docs/reliability.md, "Twins"): two messages with the same
// Message-ID, INTERNALDATE and size but different bodies share a header
// fingerprint. After the mailbox is re-created in another order (a new
// UIDVALIDITY, the twins' UIDs swapped), each must keep its own UIDL, and a
// deletion left pending from before the change must remove the twin that was
// DELE'd, never the other.

// twinMailbox is the mailbox the twin tests serve: a mailbox of its own, so
// that it can be deleted and created again on any server (Dovecot cannot
// delete INBOX).
const twinMailbox = "Twins"

// twins returns two messages that tie on every fingerprint field: the same
// Message-ID, the same size (RFC822.SIZE), bodies that differ.
func twins() (a, b []byte) {
	a = message("twin", "resent", "first copy of the twin: AAAA\r\n")
	b = message("twin", "resent", "other copy of the twin: BBBB\r\n")
	if len(a) != len(b) {
		panic("twins must have the same size")
	}
	return a, b
}

// TestTwinsKeepTheirUIDLs re-creates a mailbox holding twins with the twins
// in swapped order, under the hide and the expunge policy, on every upstream:
// no twin may get the other's UIDL, and the expunge the laptop left pending
// before the change must remove the twin it DELE'd (the bytes that remain
// are the other twin's).
//
// With "apart", twin B arrives after popbridge has seen twin A alone, so the
// tie is first seen by an incremental sync, which must take the digest of
// both.
func TestTwinsKeepTheirUIDLs(t *testing.T) {
	for _, policy := range []string{PolicyHide, PolicyExpunge} {
		for _, arrival := range []string{"together", "apart"} {
			t.Run(policy+"/"+arrival, func(t *testing.T) {
				forEachUpstream(t, func(t *testing.T, up *upstreamEnv) { twinsSwapped(t, up, policy, arrival == "apart") })
			})
		}
	}
}

func twinsSwapped(t *testing.T, up *upstreamEnv, policy string, apart bool) {
	a, b := twins()
	other := message("other", "unrelated", "nothing to do with the twins\r\n")
	date := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	up.box.Create(twinMailbox)
	up.box.AppendAt(twinMailbox, a, date)
	if !apart {
		up.box.AppendAt(twinMailbox, b, date)
	}
	up.box.AppendAt(twinMailbox, other, date.Add(time.Hour))

	// The expunge must fail so that it stays pending across the change:
	// popbridge reaches the upstream through a proxy that cuts the
	// connection at UID EXPUNGE and then refuses new ones.
	p := faultproxy.New(t, up.addr)
	via := *up
	via.addr = p.Addr
	e := newEnv(t, &via, func(c *Config) {
		c.Upstream.Mailbox = twinMailbox
		c.Upstream.Timeout = faultTimeout
		c.Delete.Policy = Policy(policy)
	})
	if apart {
		c := e.session("phone")
		if n := len(c.list()); n != 2 {
			t.Fatalf("twin A alone: %d messages listed", n)
		}
		c.quit()
		up.box.AppendAt(twinMailbox, b, date)
	}

	// Each device sees both twins at first, each with a UIDL of its own.
	c := e.session("laptop")
	first := twinUIDLs(t, c, a, b, other)
	if first.a == "" || first.b == "" || first.a == first.b {
		t.Fatalf("before the change: UIDL of twin A %q, of twin B %q", first.a, first.b)
	}
	c.ok("DELE %d", first.n[first.a])
	var r *faultproxy.Rule
	if policy == PolicyExpunge {
		r = p.On(faultproxy.ToServer, " UID EXPUNGE ", faultproxy.Reset).AndRefuse()
	}
	q := c.quit()
	switch {
	case policy == PolicyExpunge && !strings.HasPrefix(q, "-ERR [SYS/TEMP]"):
		t.Fatalf("QUIT with the upstream cut at UID EXPUNGE = %q, want -ERR [SYS/TEMP]", q)
	case policy != PolicyExpunge && !strings.HasPrefix(q, "+OK"):
		t.Fatalf("QUIT = %q", q)
	}
	if r != nil {
		if _, ok := r.Event(); !ok {
			t.Fatal("the fault did not fire")
		}
		if p := pendingOf(t, e, up, "laptop"); p == nil || len(p.UIDLs) != 1 || p.UIDLs[0] != first.a {
			t.Fatalf("pending UPDATE = %+v, want the UIDL %s of twin A", p, first.a)
		}
	}
	p.Disarm()
	p.Refuse(false)

	// The mailbox is re-created with the twins in the other order.
	oldUV := up.box.UIDValidity(twinMailbox)
	up.box.Recreate(twinMailbox)
	up.box.AppendAt(twinMailbox, b, date)
	up.box.AppendAt(twinMailbox, a, date)
	up.box.AppendAt(twinMailbox, other, date.Add(time.Hour))
	if uv := up.box.UIDValidity(twinMailbox); uv == oldUV {
		t.Fatalf("re-creating %s kept UIDVALIDITY %d", twinMailbox, uv)
	}

	// The laptop: the pending expunge is finished; either way twin A,
	// which it deleted, is gone from its view and twin B keeps its UIDL.
	c = e.session("laptop")
	got := twinUIDLs(t, c, a, b, other)
	c.quit()
	if got.a != "" {
		t.Errorf("the laptop deleted twin A (UIDL %s) but sees it again as UIDL %s", first.a, got.a)
	}
	if got.b == first.a {
		t.Errorf("twin B got the UIDL %s of twin A", first.a)
	}
	if got.b != first.b && got.b != "" {
		t.Logf("twin B got a new UIDL %s (was %s): allowed, a duplicate download loses nothing", got.b, first.b)
	}
	if got.b == "" {
		t.Errorf("the laptop no longer sees twin B, which it never deleted")
	}
	if got.other != first.other {
		t.Errorf("the unrelated message changed its UIDL from %s to %s", first.other, got.other)
	}

	// What is upstream now.
	var left [][]byte
	for _, m := range up.box.Messages(twinMailbox) {
		left = append(left, m.Raw)
	}
	has := func(raw []byte) bool {
		for _, l := range left {
			if bytes.Equal(l, raw) {
				return true
			}
		}
		return false
	}
	if !has(b) {
		t.Errorf("twin B, never DELE'd, is gone from the upstream")
	}
	if !has(other) {
		t.Errorf("the unrelated message is gone from the upstream")
	}
	switch policy {
	case PolicyExpunge:
		if has(a) {
			t.Errorf("twin A was DELE'd + QUIT under expunge but is still upstream")
		}
		if len(left) != 2 {
			t.Errorf("the upstream holds %d messages, want twin B and the unrelated one", len(left))
		}
	case PolicyHide:
		if !has(a) || len(left) != 3 {
			t.Errorf("hide changed the upstream: %d messages, twin A there: %v", len(left), has(a))
		}
	}

	// Another device: a twin never shows the other's bytes under a UIDL the
	// laptop was given for the other.
	c = e.session("phone")
	ph := twinUIDLs(t, c, a, b, other)
	c.quit()
	if ph.a == first.b || ph.b == first.a {
		t.Errorf("the twins swapped UIDLs: A %s -> %s, B %s -> %s", first.a, ph.a, first.b, ph.b)
	}
	if policy == PolicyHide && (ph.a == "" || ph.b == "") {
		t.Errorf("under hide another device must see both twins: A %q, B %q", ph.a, ph.b)
	}
}

// twinListing is which UIDL a session listed for each message, found by
// RETR bytes; n maps a UIDL to its message number.
type twinListing struct {
	a, b, other string
	n           map[string]int
}

// twinUIDLs lists the session and retrieves every message, to tell which
// UIDL is which message. It fails on a message that is none of them.
func twinUIDLs(t *testing.T, c *popConn, a, b, other []byte) twinListing {
	t.Helper()
	out := twinListing{n: map[string]int{}}
	for _, l := range c.list() {
		raw := c.retr(l.n)
		out.n[l.uidl] = l.n
		switch {
		case bytes.Equal(raw, a):
			out.a = l.uidl
		case bytes.Equal(raw, b):
			out.b = l.uidl
		case bytes.Equal(raw, other):
			out.other = l.uidl
		default:
			t.Fatalf("message %d (UIDL %s) is none of the test's: %q", l.n, l.uidl, raw)
		}
	}
	return out
}

// pendingOf returns the pending UPDATE of device, nil when there is none.
func pendingOf(t *testing.T, e *env, up *upstreamEnv, device string) *state.Pending {
	t.Helper()
	cl, err := e.st.LoadClient(context.Background(), state.ClientKey{Mailbox: e.srv.Bridge.mailboxKey(up.user), Client: device})
	if err != nil {
		t.Fatal(err)
	}
	return cl.Pending
}

// TestTwinsIdenticalNotGuessed: two copies with the very same bytes cannot
// be told apart even by digest. After the mailbox is re-created, neither
// copy inherits a UIDL, and the expunge of one copy left pending from
// before the change touches nothing: both copies stay upstream.
func TestTwinsIdenticalNotGuessed(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, up *upstreamEnv) {
		a, _ := twins()
		date := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
		up.box.Create(twinMailbox)
		up.box.AppendAt(twinMailbox, a, date)
		up.box.AppendAt(twinMailbox, a, date)
		p := faultproxy.New(t, up.addr)
		via := *up
		via.addr = p.Addr
		e := newEnv(t, &via, func(c *Config) {
			c.Upstream.Mailbox = twinMailbox
			c.Upstream.Timeout = faultTimeout
			c.Delete.Policy = PolicyExpunge
		})
		c := e.session("laptop")
		before := c.uidls()
		if len(before) != 2 {
			t.Fatalf("%d messages listed, want the two copies", len(before))
		}
		c.ok("DELE 1")
		p.On(faultproxy.ToServer, " UID EXPUNGE ", faultproxy.Reset).AndRefuse()
		if q := c.quit(); !strings.HasPrefix(q, "-ERR [SYS/TEMP]") {
			t.Fatalf("QUIT with the upstream cut at UID EXPUNGE = %q", q)
		}
		p.Disarm()
		p.Refuse(false)

		up.box.Recreate(twinMailbox)
		up.box.AppendAt(twinMailbox, a, date)
		up.box.AppendAt(twinMailbox, a, date)
		c = e.session("laptop")
		after := c.uidls()
		c.quit()
		if len(after) != 2 {
			t.Errorf("after the change the laptop lists %v, want both copies", after)
		}
		for _, u := range after {
			if u == before[0] || u == before[1] {
				t.Errorf("a copy inherited UIDL %s although the copies cannot be told apart", u)
			}
		}
		if n := len(up.box.Messages(twinMailbox)); n != 2 {
			t.Errorf("the pending expunge was replayed on an ambiguous copy: %d copies left, want 2", n)
		}
		if pendingOf(t, e, up, "laptop") != nil {
			t.Errorf("the pending UPDATE is still there after the replay")
		}
	})
}
