package bridge

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestConfigExampleIsValidAndComplete(t *testing.T) {
	data, err := os.ReadFile("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(string(data))
	if err != nil {
		t.Fatalf("config.toml.example: %v", err)
	}
	def := DefaultConfig()
	def.Upstream.Address = cfg.Upstream.Address
	if !reflect.DeepEqual(cfg, def) {
		t.Errorf("config.toml.example does not show the defaults:\n got %+v\nwant %+v", cfg, def)
	}
	// Every key of the example is a key of Config, and the example shows
	// every key: count "key =" lines against the struct's TOML tags.
	var n int
	for _, line := range strings.Split(string(data), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "[") && strings.Contains(l, "=") {
			n++
		}
	}
	var want int
	ct := reflect.TypeFor[Config]()
	for i := range ct.NumField() {
		ft := ct.Field(i).Type
		if ft.Kind() == reflect.Slice {
			// An array of tables has no default entry: the example shows
			// its keys commented out, each as "# key =".
			checkCommentedKeys(t, string(data), ft.Elem())
			continue
		}
		want += ft.NumField()
	}
	if n != want {
		t.Errorf("config.toml.example has %d keys, Config has %d: document every key", n, want)
	}
}

// checkCommentedKeys checks that the example shows every key of the table
// type tt, and of its sub-tables, as a commented "# key =" line.
func checkCommentedKeys(t *testing.T, text string, tt reflect.Type) {
	t.Helper()
	for i := range tt.NumField() {
		f := tt.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if f.Type.Kind() == reflect.Struct {
			checkCommentedKeys(t, text, f.Type)
			continue
		}
		if name == "client_secret" {
			continue // exists only to refuse an inline secret
		}
		if !strings.Contains(text, "# "+name+" =") {
			t.Errorf("config.toml.example does not show %s (as \"# %s = ...\")", name, name)
		}
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := "[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"none\"\n"
	tests := []struct{ text, want string }{
		{base + "adress = \"x\"\n", "upstream.adress (line 4): unknown key"},
		{base + "name = \"a/b\"\n", "upstream.name"},
		{base + "name = \"\"\n", "upstream.name"},
		{base + "[server]\nlisten = \"nowhere\"\n", "server.listen"},
		{base + "[server]\nidle_timeout = \"1m\"\n", "server.idle_timeout"},
		{base + "[server]\nidle_timeout = \"soon\"\n", "idle_timeout"},
		{base + "[delete]\npolicy = \"shred\"\n", "delete.policy"},
		{base + "[delete]\npolicy = \"flag\"\nflags = []\n", "delete.flags"},
		{base + "[delete]\nflags = [\"two words\"]\n", "delete.flags"},
		{base + "[uidl]\nformat = \"%v\"\n", "uidl.format"},
		{base + "[state]\ndriver = \"mysql\"\n", "state.driver"},
		{base + "[state]\ndriver = \"postgres\"\n", "state.dsn"},
		{base + "[log]\nlevel = \"loud\"\n", "log.level"},
		{base + "[tls]\ncert_file = \"a.pem\"\n", "tls"},
		{base + "[server]\nlisten_tls = \":995\"\n", "server.listen_tls"},
		{"[upstream]\nsecurity = \"none\"\n", "upstream.address"},
		{"[upstream]\naddress = \"h:1\"\nsecurity = \"ssl\"\n", "upstream.security"},
		{"[upstream\naddress = 1", "line"},
		{base + "[auth]\ndevice_separator = \"##\"\n", "auth.device_separator"},
		{base + "[server]\nproxy_trusted = [\"10.0.0.0/33\"]\n", "server.proxy_trusted"},
		{base + "[server]\nproxy_trusted = [\"lb.example.com\"]\n", "server.proxy_trusted"},
		{base + "[auth]\noauth_mechanisms = [\"CRAM-MD5\"]\n", "auth.oauth_mechanisms"},
		{base + "[auth]\noauth_mechanisms = [\"XOAUTH2\", \"XOAUTH2\"]\n", "auth.oauth_mechanisms"},
		{base + "[limits]\nmax_connections = -1\n", "limits.max_connections"},
		{base + "[limits]\nmax_connections_per_ip = -1\n", "limits.max_connections_per_ip"},
		{base + "[limits]\nmax_login_failures_per_account = -1\n", "limits.max_login_failures_per_account"},
		{base + "[limits]\nlogin_failure_delay = \"20s\"\n", "limits.login_failure_delay_max"},
		{base + "[limits]\nlogin_failure_delay = \"-1s\"\n", "limits.login_failure_delay"},
		{base + "[limits]\nlogin_failure_window = \"0s\"\n", "limits.login_failure_window"},
		{base + "[limits]\nexempt_networks = [\"localhost\"]\n", "limits.exempt_networks"},
		{base + "[limits]\nmax_conections = 1\n", "limits.max_conections (line 5): unknown key"},
	}
	for _, tc := range tests {
		_, err := ParseConfig(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want one naming %q", tc.text, err, tc.want)
		}
	}
	cfg, err := ParseConfig(base + "[server]\nshutdown_timeout = \"5s\"\n")
	if err != nil || cfg.Server.ShutdownTimeout != 5*time.Second {
		t.Errorf("valid config: %v %+v", err, cfg.Server)
	}
	cfg, err = ParseConfig(base + "[server]\nproxy_trusted = [\"10.0.0.0/8\", \"2001:db8::1\"]\n" +
		"[limits]\nmax_login_failures_per_ip = 0\nmax_login_failures_per_account = 0\nlogin_failure_window = \"0s\"\nexempt_networks = []\n")
	if err != nil || len(cfg.Server.ProxyTrusted) != 2 || len(cfg.Limits.ExemptNetworks) != 0 {
		t.Errorf("valid config: %v %+v %+v", err, cfg.Server, cfg.Limits)
	}
}

// TestConfigReportsEveryProblem: a file with several mistakes gets them
// all in one error, in the order of the file, each with its key; a value
// that does not decode and a value that does not validate alike.
func TestConfigReportsEveryProblem(t *testing.T) {
	_, err := ParseConfig(`[server]
listen = "nowhere"
idle_timeout = "1m"
[upstream]
address = "127.0.0.1:143"
security = "ssl"
[delete]
policy = "shred"
[uidl]
format = "%v"
[log]
level = "loud"
[nosuch]
`)
	if err == nil {
		t.Fatal("no error")
	}
	text := err.Error()
	want := []string{"config: 7 problems:", "server.listen: \"nowhere\" is not host:port", "server.idle_timeout: 1m0s is below", "upstream.security (line 6)", "delete.policy (line 8)", "uidl.format (line 10)", "log.level (line 12)", "nosuch (line 13): unknown key"}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("error lacks %q:\n%s", w, text)
		}
	}
	// A key that did not decode is not reported again by validation.
	_, err = ParseConfig("[upstream]\naddress = 143\n")
	if err == nil || strings.Count(err.Error(), "upstream.address") != 1 {
		t.Errorf("upstream.address reported %d times:\n%v", strings.Count(fmt.Sprint(err), "upstream.address"), err)
	}
}
