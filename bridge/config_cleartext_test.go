package bridge

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestCleartextNeedsLoopbackOrConsent: passwords in clear toward a remote
// upstream (upstream.security = "none") or from remote clients
// (auth.allow_insecure_auth on a listener that is not loopback) stop
// popbridge at start, naming the key, unless the operator says so
// explicitly; then every start logs a warning.
func TestCleartextNeedsLoopbackOrConsent(t *testing.T) {
	up := func(addr string) string {
		return "[upstream]\naddress = \"" + addr + "\"\nsecurity = \"none\"\n"
	}
	for _, addr := range []string{"imap.example.com:143", "10.0.0.5:143", "[2001:db8::5]:143", ":143", "0.0.0.0:143"} {
		_, err := ParseConfig(up(addr))
		if err == nil || !strings.Contains(err.Error(), "upstream.security") || !strings.Contains(err.Error(), "upstream.allow_cleartext_remote") {
			t.Errorf("security none to %s: %v, want an error naming upstream.security and upstream.allow_cleartext_remote", addr, err)
		}
		if _, err := ParseConfig(up(addr) + "allow_cleartext_remote = true\n"); err != nil {
			t.Errorf("security none to %s with allow_cleartext_remote: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:143", "127.1.2.3:143", "[::1]:143", "localhost:143"} {
		if _, err := ParseConfig(up(addr)); err != nil {
			t.Errorf("security none to %s (loopback): %v", addr, err)
		}
	}
	tlsUp := "[upstream]\naddress = \"imap.example.com:993\"\n"
	for _, listen := range []string{":1110", "0.0.0.0:1110", "[::]:1110", "192.0.2.1:1110", "pop.example.com:1110"} {
		text := tlsUp + "[server]\nlisten = \"" + listen + "\"\n[auth]\nallow_insecure_auth = true\n"
		_, err := ParseConfig(text)
		if err == nil || !strings.Contains(err.Error(), "auth.allow_insecure_auth") || !strings.Contains(err.Error(), "auth.allow_insecure_auth_remote") {
			t.Errorf("allow_insecure_auth on %s: %v, want an error naming auth.allow_insecure_auth and auth.allow_insecure_auth_remote", listen, err)
		}
		if _, err := ParseConfig(text + "allow_insecure_auth_remote = true\n"); err != nil {
			t.Errorf("allow_insecure_auth on %s with allow_insecure_auth_remote: %v", listen, err)
		}
		if _, err := ParseConfig(tlsUp + "[server]\nlisten = \"" + listen + "\"\n"); err != nil {
			t.Errorf("listen %s without allow_insecure_auth: %v", listen, err)
		}
	}
	for _, listen := range []string{"127.0.0.1:1110", "[::1]:1110", "localhost:1110"} {
		if _, err := ParseConfig(tlsUp + "[server]\nlisten = \"" + listen + "\"\n[auth]\nallow_insecure_auth = true\n"); err != nil {
			t.Errorf("allow_insecure_auth on %s (loopback): %v", listen, err)
		}
	}

	// With consent, every start says so loudly.
	for _, tc := range []struct {
		name, text, want string
	}{
		{"upstream", up("192.0.2.9:143") + "allow_cleartext_remote = true\n", "upstream.allow_cleartext_remote"},
		{"listener", tlsUp + "[server]\nlisten = \"0.0.0.0:0\"\n[auth]\nallow_insecure_auth = true\nallow_insecure_auth_remote = true\n", "auth.allow_insecure_auth_remote"},
	} {
		cfg, err := ParseConfig(tc.text)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		obs, logs := observer.New(zapcore.WarnLevel)
		if _, err := NewServer(cfg, nil, zap.New(obs)); err != nil {
			t.Fatalf("%s: NewServer: %v", tc.name, err)
		}
		found := false
		for _, e := range logs.All() {
			found = found || e.Level == zapcore.WarnLevel && strings.Contains(e.Message, tc.want) && strings.Contains(e.Message, "clear")
		}
		if !found {
			t.Errorf("%s: no warning naming %s at start; logged %v", tc.name, tc.want, logs.All())
		}
	}
}
