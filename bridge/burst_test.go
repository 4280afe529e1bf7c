package bridge

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// TestLoginBurstHoldsTheLimits: wrong passwords sent all at once, so that
// none has failed yet when the others begin, reach the upstream no more
// often than the failure limits allow: attempts in flight count against
// them. The upstream holds every LOGIN until the burst is in, and counts
// them.
func TestLoginBurstHoldsTheLimits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		local func(i int) string
		user  string
		limit int
	}{
		{"100 addresses, one account", 100, func(i int) string { return fmt.Sprintf("127.0.%d.%d", 1+i/200, 1+i%200) }, "alice", 30},
		{"20 from one address", 20, func(int) string { return "127.0.3.7" }, "carol", 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := imaptest.NewMemServer(t)
			cfg := secConfig(mem.Addr)
			cfg.Upstream.Timeout = 2 * time.Minute
			cfg.Limits = LimitsConfig{
				MaxConnections: 1000, MaxLoginFailuresPerIP: 10, MaxLoginFailuresPerAccount: 30,
				LoginFailureWindow: 15 * time.Minute, // no exempt networks: loopback counts
			}
			s := startSec(t, cfg)
			release := mem.Block("LOGIN")
			defer release()

			answers := make(chan string, tc.n)
			for i := range tc.n {
				go func() {
					p, err := dialLogin(s.addr, tc.local(i))
					if err != nil {
						answers <- "error: " + err.Error()
						return
					}
					defer p.close()
					answers <- answerOf(p.userPass(fmt.Sprintf("%s#d%d", tc.user, i), "wrong-password"))
				}()
			}
			// Every attempt is either answered already or held at the
			// upstream.
			var got []string
			deadline := time.Now().Add(2 * time.Minute)
			for len(got)+len(mem.CommandsNamed("LOGIN")) < tc.n {
				select {
				case a := <-answers:
					got = append(got, a)
				case <-time.After(10 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("after 2 minutes: %d answered, %d LOGINs upstream, of %d", len(got), len(mem.CommandsNamed("LOGIN")), tc.n)
				}
			}
			reached := len(mem.CommandsNamed("LOGIN"))
			release()
			for len(got) < tc.n {
				select {
				case a := <-answers:
					got = append(got, a)
				case <-time.After(2 * time.Minute):
					t.Fatalf("%d of %d attempts unanswered", tc.n-len(got), tc.n)
				}
			}
			t.Logf("%d simultaneous wrong passwords: %d reached the upstream, the limit is %d", tc.n, reached, tc.limit)
			if reached > tc.limit {
				t.Errorf("%d of %d simultaneous wrong passwords reached the upstream; the limit is %d", reached, tc.n, tc.limit)
			}
			var refused, delayed int
			for _, a := range got {
				switch {
				case a == "-ERR [AUTH] authentication failed":
					refused++
				case strings.HasPrefix(a, "-ERR [LOGIN-DELAY]"):
					delayed++
				default:
					t.Errorf("answer %q", a)
				}
			}
			if refused != reached || delayed != tc.n-reached {
				t.Errorf("%d refused by the upstream and %d [LOGIN-DELAY], for %d LOGINs upstream of %d attempts", refused, delayed, reached, tc.n)
			}
			// The limit now holds for the right password too, without
			// asking the upstream.
			mem.ResetCommands()
			p, err := dialLogin(s.addr, tc.local(0))
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			if r, err := p.userPass(tc.user, mem.Pass); !strings.HasPrefix(answerOf(r, err), "-ERR [LOGIN-DELAY]") {
				t.Errorf("after the burst: %q %v, want [LOGIN-DELAY]", r, err)
			}
			if n := len(mem.CommandsNamed("LOGIN")); n != 0 {
				t.Errorf("%d LOGINs upstream after the limit was reached", n)
			}
		})
	}
}
