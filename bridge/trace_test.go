package bridge

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// TestUpstreamTraceFromConfig: log.upstream_trace writes the upstream
// protocol of a session into the log, one entry per protocol line, with
// the password redacted; log.upstream_trace_accounts limits it to the
// accounts named.
func TestUpstreamTraceFromConfig(t *testing.T) {
	var pass, user string
	run := func(t *testing.T, accounts []string) []observer.LoggedEntry {
		mem := imaptest.NewMemServer(t)
		user, pass = mem.User, mem.Pass
		mem.Append("INBOX", message("trace.1", "traced", "body\r\n"))
		core, logs := observer.New(zapcore.DebugLevel)
		e := startBridge(t, &upstreamEnv{addr: mem.Addr, user: mem.User, pass: mem.Pass, mem: mem}, withLogger(zap.New(core)),
			withConfig(func(c *Config) {
				c.Log.UpstreamTrace = true
				c.Log.UpstreamTraceAccounts = accounts
			}))
		c := e.session("laptop")
		c.ok("STAT")
		c.quit()
		e.stop()
		return logs.FilterLoggerName("trace").AllUntimed()
	}

	t.Run("on", func(t *testing.T) {
		entries := run(t, nil)
		var lines []string
		for _, en := range entries {
			if en.ContextMap()["account"] == nil {
				t.Errorf("trace entry without the account: %v", en.ContextMap())
			}
			lines = append(lines, en.ContextMap()["line"].(string))
		}
		all := strings.Join(lines, "\n")
		if !strings.Contains(all, "LOGIN [redacted]") && !strings.Contains(all, "AUTHENTICATE PLAIN [redacted]") {
			t.Errorf("no redacted login in the trace:\n%s", all)
		}
		for _, want := range []string{"C: ", "S: ", "SELECT", "LOGOUT"} {
			if !strings.Contains(all, want) {
				t.Errorf("trace lacks %q:\n%s", want, all)
			}
		}
		if strings.Contains(all, pass) {
			t.Errorf("the password is in the trace:\n%s", all)
		}
		for _, l := range lines {
			if strings.ContainsAny(l, "\r\n") {
				t.Errorf("a trace entry holds a line end: %q", l)
			}
		}
	})
	t.Run("other account", func(t *testing.T) {
		if entries := run(t, []string{"someone-else@example.com"}); len(entries) != 0 {
			t.Errorf("%d trace entries for an account not in upstream_trace_accounts", len(entries))
		}
	})
	t.Run("named account", func(t *testing.T) {
		if entries := run(t, []string{user}); len(entries) == 0 {
			t.Error("no trace for the account named in upstream_trace_accounts")
		}
	})
}
