package bridge

import (
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
		want += ct.Field(i).Type.NumField()
	}
	if n != want {
		t.Errorf("config.toml.example has %d keys, Config has %d: document every key", n, want)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := "[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"none\"\n"
	tests := []struct{ text, want string }{
		{base + "adress = \"x\"\n", "unknown key upstream.adress"},
		{base + "[server]\nlisten = \"nowhere\"\n", "server.listen"},
		{base + "[server]\nidle_timeout = \"1m\"\n", "server.idle_timeout"},
		{base + "[server]\nidle_timeout = \"soon\"\n", "idle_timeout"},
		{base + "[delete]\npolicy = \"shred\"\n", "delete.policy"},
		{base + "[delete]\npolicy = \"flag\"\nflags = []\n", "delete.flags"},
		{base + "[delete]\nflags = [\"two words\"]\n", "delete.flags"},
		{base + "[uidl]\nformat = \"%v\"\n", "uidl.format"},
		{base + "[state]\ndriver = \"mysql\"\n", "state.driver"},
		{base + "[log]\nlevel = \"loud\"\n", "log.level"},
		{base + "[tls]\ncert_file = \"a.pem\"\n", "tls"},
		{base + "[server]\nlisten_tls = \":995\"\n", "server.listen_tls"},
		{"[upstream]\nsecurity = \"none\"\n", "upstream.address"},
		{"[upstream]\naddress = \"h:1\"\nsecurity = \"ssl\"\n", "upstream.security"},
		{"[upstream\naddress = 1", "line"},
		{base + "[auth]\ndevice_separator = \"##\"\n", "auth.device_separator"},
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
}
