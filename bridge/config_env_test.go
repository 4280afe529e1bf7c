package bridge

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/upstream"
)

// TestConfigFromEnvironment: POPBRIDGE_<TABLE>_<KEY> overrides the file,
// strings and durations need no quotes, arrays come as comma lists or TOML
// arrays, variables of other programs are left alone, and every bad value
// or unknown key is reported at once with its key and variable.
func TestConfigFromEnvironment(t *testing.T) {
	file := "[upstream]\naddress = \"127.0.0.2:143\"\nsecurity = \"none\"\n[limits]\nmax_connections = 7\n"
	env := []string{
		"POPBRIDGE_UPSTREAM_ADDRESS=127.0.0.1:1993",
		"POPBRIDGE_UPSTREAM_SECURITY=tls",
		"POPBRIDGE_UPSTREAM_TIMEOUT=45s",
		"POPBRIDGE_UPSTREAM_MARK_SEEN_ON_RETR=true",
		"POPBRIDGE_LIMITS_MAX_CONNECTIONS=5",
		"POPBRIDGE_DELETE_POLICY=flag",
		`POPBRIDGE_DELETE_FLAGS=\Seen, $Gone`,
		`POPBRIDGE_AUTH_OAUTH_MECHANISMS=["XOAUTH2"]`,
		"POPBRIDGE_LIMITS_EXEMPT_NETWORKS=10.0.0.0/8,::1",
		"POPBRIDGE_LOG_LEVEL=debug",
		"POPBRIDGE_PASSWORD=not-a-key",            // popbridge check's, not a table
		"POPBRIDGE_TEST_PG=postgres://somewhere/", // the tests', not a table
		"HOME=/root",
	}
	cfg, err := parseConfig(file, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream.Address != "127.0.0.1:1993" || cfg.Upstream.Security != upstream.SecurityTLS || cfg.Upstream.Timeout != 45*time.Second || !cfg.Upstream.MarkSeenOnRetr {
		t.Errorf("upstream: %+v", cfg.Upstream)
	}
	if cfg.Limits.MaxConnections != 5 {
		t.Errorf("limits.max_connections = %d, want 5 (the environment over the file)", cfg.Limits.MaxConnections)
	}
	if cfg.Delete.Policy != PolicyFlag || !slices.Equal(cfg.Delete.Flags, []string{`\Seen`, "$Gone"}) {
		t.Errorf("delete: %+v", cfg.Delete)
	}
	if !slices.Equal(cfg.Auth.OAuthMechanisms, []string{"XOAUTH2"}) {
		t.Errorf("auth.oauth_mechanisms = %q", cfg.Auth.OAuthMechanisms)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if !slices.Equal([]netip.Prefix(cfg.Limits.ExemptNetworks), want) {
		t.Errorf("limits.exempt_networks = %v, want %v", cfg.Limits.ExemptNetworks, want)
	}
	if cfg.Log.Level.String() != "debug" {
		t.Errorf("log.level = %v", cfg.Log.Level)
	}
	// An empty value is an empty array.
	cfg, err = parseConfig(file, []string{"POPBRIDGE_AUTH_OAUTH_MECHANISMS="})
	if err != nil || len(cfg.Auth.OAuthMechanisms) != 0 {
		t.Errorf("empty list: %q %v", cfg.Auth.OAuthMechanisms, err)
	}

	_, err = parseConfig(file, []string{
		"POPBRIDGE_LIMITS_MAX_CONNECTIONS=many",
		"POPBRIDGE_UPSTREAM_SECURITY=bogus",
		"POPBRIDGE_UPSTREAM_ADRESS=x:1",
		"POPBRIDGE_UPSTREAM_TIMEOUT=30",
	})
	if err == nil {
		t.Fatal("bad variables accepted")
	}
	for _, want := range []string{
		"4 problems",
		"limits.max_connections (environment variable POPBRIDGE_LIMITS_MAX_CONNECTIONS)",
		"upstream.security (environment variable POPBRIDGE_UPSTREAM_SECURITY)",
		"upstream.adress (environment variable POPBRIDGE_UPSTREAM_ADRESS): unknown key",
		"upstream.timeout (environment variable POPBRIDGE_UPSTREAM_TIMEOUT)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestConfigSecretFromFile: state.dsn_file (in the file or the
// environment) fills state.dsn from a file, without its line end; with
// state.dsn too, or with a file that cannot be read, it is an error.
func TestConfigSecretFromFile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "dsn")
	const dsn = "postgres://popbridge:s3cret@db.internal/popbridge"
	if err := os.WriteFile(secret, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"none\"\n[state]\ndriver = \"postgres\"\n"
	cfg, err := parseConfig(base+"dsn_file = \""+secret+"\"\n", nil)
	if err != nil || cfg.State.DSN != dsn {
		t.Fatalf("dsn_file: %q %v", cfg.State.DSN, err)
	}
	cfg, err = parseConfig(base, []string{"POPBRIDGE_STATE_DSN_FILE=" + secret})
	if err != nil || cfg.State.DSN != dsn {
		t.Fatalf("POPBRIDGE_STATE_DSN_FILE: %q %v", cfg.State.DSN, err)
	}
	_, err = parseConfig(base+"dsn = \"postgres://x\"\ndsn_file = \""+secret+"\"\n", nil)
	if err == nil || !strings.Contains(err.Error(), "state.dsn_file: set together with state.dsn") {
		t.Errorf("dsn and dsn_file together: %v", err)
	}
	_, err = parseConfig(base+"dsn_file = \""+filepath.Join(dir, "missing")+"\"\n", nil)
	if err == nil || !strings.Contains(err.Error(), "state.dsn_file") || strings.Contains(err.Error(), "state.dsn:") {
		t.Errorf("missing dsn_file: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "s3cret") {
		t.Errorf("an error shows the secret: %v", err)
	}
}
