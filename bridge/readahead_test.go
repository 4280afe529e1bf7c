package bridge

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// TestReadAhead: a client that retrieves every message in order costs one
// UID FETCH per batch, not one per message, and gets the same bytes; out of
// order and vanished messages still work.
func TestReadAhead(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	const n = 40
	for i := 1; i <= n; i++ {
		mem.Append("INBOX", message(fmt.Sprint("ra", i), fmt.Sprint("read ahead ", i), strings.Repeat(fmt.Sprintf("line %d\r\n", i), i)))
	}
	stored := mem.Messages("INBOX")
	e := newEnv(t, up)
	c := e.session("")
	mem.ResetCommands()
	for i := 1; i <= n; i++ {
		if got := c.retr(i); !bytes.Equal(got, stored[i-1].Raw) {
			t.Fatalf("RETR %d differs from the upstream", i)
		}
	}
	fetches := len(mem.CommandsNamed("UID FETCH"))
	if max := (n + readAheadMessages - 1) / readAheadMessages; fetches > max {
		t.Errorf("%d sequential RETRs sent %d UID FETCHes, want at most %d", n, fetches, max)
	}
	// Out of order, then in order again from the middle.
	for _, i := range []int{7, 3, 4, 5, 39, 40} {
		if got := c.retr(i); !bytes.Equal(got, stored[i-1].Raw) {
			t.Fatalf("RETR %d differs from the upstream", i)
		}
	}
	c.quit()

	// Messages expunged upstream after login: the read-ahead finds none,
	// the client gets -ERR for each, and the session goes on.
	c = e.session("")
	mem.Reset("INBOX")
	for i := 1; i <= 3; i++ {
		if r := c.cmd("RETR %d", i); !strings.HasPrefix(r, "-ERR") || !strings.Contains(r, "no longer exists") {
			t.Errorf("RETR %d of a vanished message = %q", i, r)
		}
	}
	c.ok("NOOP")
	c.quit()
}

// TestReadAheadGlobalBudget: read-ahead buffers come from one budget for
// the whole process. When another session holds it all, a session
// retrieves in order without reading ahead (one UID per UID FETCH), with
// the same bytes; once the budget is back, it reads ahead again, and
// nothing stays held after the sessions end.
func TestReadAheadGlobalBudget(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	const n = 10
	for i := 1; i <= n; i++ {
		mem.Append("INBOX", message(fmt.Sprint("gb", i), fmt.Sprint("budget ", i), strings.Repeat(fmt.Sprintf("line %d\r\n", i), 10*i)))
	}
	stored := mem.Messages("INBOX")
	cfg := secConfig(mem.Addr)
	s := startSec(t, cfg, func(srv *Server) {
		srv.Bridge.drops.ahead = newAheadPool(readAheadBudget) // room for one session's read-ahead
	})
	fetchSets := func() []string {
		var sets []string
		for _, c := range mem.CommandsNamed("UID FETCH") {
			if strings.Contains(c.Args, "BODY.PEEK[]") {
				sets = append(sets, c.Set())
			}
		}
		mem.ResetCommands()
		return sets
	}
	retr := func(c *popConn, i int) {
		t.Helper()
		if got := c.retr(i); !bytes.Equal(got, stored[i-1].Raw) {
			t.Fatalf("RETR %d differs from the upstream", i)
		}
	}
	a := dialPOP(t, s.addr)
	a.login(mem.User+"#a", mem.Pass)
	b := dialPOP(t, s.addr)
	b.login(mem.User+"#b", mem.Pass)
	mem.ResetCommands()

	retr(a, 1) // a reads 2..10 ahead and holds the whole budget
	if sets := fetchSets(); len(sets) != 1 || sets[0] == "1" {
		t.Fatalf("a's RETR 1 fetched %q, want one batch", sets)
	}
	for i := 1; i <= 3; i++ {
		retr(b, i)
	}
	if sets := fetchSets(); strings.Join(sets, " ") != "1 2 3" {
		t.Errorf("b's RETR 1-3 with the budget taken fetched %q, want 1 2 3, one by one", sets)
	}
	for i := 2; i <= n; i++ {
		retr(a, i)
	}
	if sets := fetchSets(); len(sets) != 0 {
		t.Errorf("a's RETR 2-%d fetched %q, want nothing (read ahead)", n, sets)
	}
	// a has used up its read-ahead: the budget is free again for b.
	retr(b, 4)
	if sets := fetchSets(); len(sets) != 1 || sets[0] == "4" {
		t.Errorf("b's RETR 4 after a's read-ahead was used up fetched %q, want one batch", sets)
	}
	for i := 5; i <= n; i++ {
		retr(b, i)
	}
	a.quit()
	b.quit()
	if held := s.srv.Bridge.drops.ahead.held(); held != 0 {
		t.Errorf("%d read-ahead buffers still held after the sessions ended", held)
	}
}
