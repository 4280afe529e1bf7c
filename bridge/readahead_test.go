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
