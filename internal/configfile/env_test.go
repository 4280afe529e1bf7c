package configfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

type envInner struct {
	Name  string        `toml:"name"`
	Ports []int         `toml:"ports"`
	Wait  time.Duration `toml:"wait"`
	On    bool          `toml:"on"`
}

type envConf struct {
	Top      envInner   `toml:"top"`
	Secret   secretConf `toml:"secret"`
	Repeated []envInner `toml:"repeated"`
}

type secretConf struct {
	Key     string `toml:"key"`
	KeyFile string `toml:"key_file,file"`
	Path    string `toml:"path_file"` // no file option: a plain key
}

// TestApplyEnv: names, values of each kind, a misspelt key, a bad value,
// variables of other programs, arrays of tables without variables.
func TestApplyEnv(t *testing.T) {
	c := envConf{Top: envInner{Name: "file", Ports: []int{1}}}
	err := ApplyEnv([]string{
		"APP_TOP_NAME=a b, c",
		"APP_TOP_PORTS=2, 3",
		"APP_TOP_WAIT=1m30s",
		"APP_TOP_ON=true",
		"APP_OTHER=x",
		"OTHER_TOP_NAME=y",
	}, "APP_", &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Top.Name != "a b, c" || !slices.Equal(c.Top.Ports, []int{2, 3}) || c.Top.Wait != 90*time.Second || !c.Top.On {
		t.Errorf("decoded %+v", c.Top)
	}
	if err := ApplyEnv([]string{"APP_TOP_PORTS=[4,5]"}, "APP_", &c); err != nil || !slices.Equal(c.Top.Ports, []int{4, 5}) {
		t.Errorf("TOML array: %v %v", c.Top.Ports, err)
	}
	err = ApplyEnv([]string{"APP_TOP_PORTS=x", "APP_TOP_NAMEE=z", "APP_REPEATED_NAME=r"}, "APP_", &c)
	for _, want := range []string{
		"top.ports (environment variable APP_TOP_PORTS):",
		"top.namee (environment variable APP_TOP_NAMEE): unknown key",
		"repeated.name (environment variable APP_REPEATED_NAME): the array of tables [[repeated]] cannot be set from the environment",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if !slices.Equal(c.Top.Ports, []int{4, 5}) {
		t.Errorf("a bad value changed the key: %v", c.Top.Ports)
	}
}

func TestResolveFiles(t *testing.T) {
	f := filepath.Join(t.TempDir(), "k")
	os.WriteFile(f, []byte("s3cret\r\n"), 0o600)
	c := envConf{Secret: secretConf{KeyFile: f, Path: "/not/read"}}
	if err := ResolveFiles(&c); err != nil || c.Secret.Key != "s3cret" {
		t.Fatalf("%+v %v", c.Secret, err)
	}
	c = envConf{Secret: secretConf{Key: "x", KeyFile: f}}
	if err := ResolveFiles(&c); err == nil || !strings.Contains(err.Error(), "secret.key_file: set together with secret.key") {
		t.Errorf("both set: %v", err)
	}
}

// TestDiff names the keys that differ, tables key by key.
func TestDiff(t *testing.T) {
	a := envConf{Top: envInner{Name: "a", Ports: []int{1}}}
	b := a
	b.Top.Ports = []int{1, 2}
	b.Secret.Key = "k"
	b.Repeated = []envInner{{}}
	if got := Diff(a, b); !slices.Equal(got, []string{"top.ports", "secret.key", "repeated"}) {
		t.Errorf("Diff = %q", got)
	}
	if got := Diff(&a, &a); len(got) != 0 {
		t.Errorf("Diff of equal values = %q", got)
	}
}
