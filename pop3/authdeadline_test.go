package pop3_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/pop3"
)

// TestAuthTimeoutIsOneDeadline: server.auth_timeout bounds the whole time
// before login, not the wait for each line. A client that sends CAPA more
// often than the timeout, and never logs in, is closed once the timeout
// has passed since it connected.
func TestAuthTimeoutIsOneDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	be := newFakeBackend()
	srv := newServer(t, be, func(s *pop3.Server) { s.AuthTimeout = timeout })
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	// 100 rounds at a third of the timeout last 33 timeouts: the server
	// must have closed the connection long before.
	const rounds = 100
	answered := 0
	for answered < rounds {
		c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c.nc, "CAPA\r\n"); err != nil {
			break
		}
		c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := c.r.ReadString('\n')
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no answer to CAPA %d and no close", answered+1)
			}
			break
		}
		if !strings.HasPrefix(l, "+OK") {
			t.Fatalf("CAPA %d answered %q", answered+1, l)
		}
		for l != ".\r\n" {
			if l, err = c.r.ReadString('\n'); err != nil {
				t.Fatalf("CAPA %d: %v", answered+1, err)
			}
		}
		answered++
		time.Sleep(timeout / 3)
	}
	if answered >= rounds {
		t.Fatalf("a client that never logs in was served %d CAPAs over %v with auth_timeout %v", answered, rounds*timeout/3, timeout)
	}
	c.wait()
	if answered == 0 {
		t.Error("not even the first CAPA was answered")
	}

	// After login, the autologout timer is per command again (RFC 1939
	// §3): a session that logs in just before the deadline keeps going.
	c = pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	time.Sleep(timeout / 2)
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(defaultMsgs()))},
	})
	time.Sleep(timeout)
	c.run([]step{{"NOOP", ok("+OK")}, {"QUIT", ok("+OK POP3 server signing off")}})
}
