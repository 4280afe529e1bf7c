package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/bridge"
)

// TestServeRefusesEmptyStateFile: `popbridge serve` on an existing state
// file of 0 bytes stops before it listens, with an error that names the file
// and both ways to start anew on purpose; the file is left as it is. With
// -init-state (or state.init_empty) the file becomes a new state file.
func TestServeRefusesEmptyStateFile(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	if err := os.WriteFile(db, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "popbridge.toml")
	text := "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:1\"\nsecurity = \"none\"\n" +
		"[state]\npath = \"" + db + "\"\n[log]\nlevel = \"error\"\n"
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	err := serve([]string{"-config", conf})
	if err == nil {
		t.Fatal("serve started on an empty state file")
	}
	for _, want := range []string{db, "empty (0 bytes)", "-init-state", "state.init_empty"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("serve: %q lacks %q", err, want)
		}
	}
	if fi, err := os.Stat(db); err != nil || fi.Size() != 0 {
		t.Fatalf("the refused state file changed: %v %v", fi, err)
	}

	for _, tc := range []struct {
		name string
		flag bool
		cfg  bridge.StateConfig
	}{
		{"-init-state", true, bridge.StateConfig{Driver: "bolt", Path: filepath.Join(dir, "a.db")}},
		{"state.init_empty", false, bridge.StateConfig{Driver: "bolt", Path: filepath.Join(dir, "b.db"), InitEmpty: true}},
	} {
		if err := os.WriteFile(tc.cfg.Path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := openStore(t.Context(), bridge.Config{State: tc.cfg}, tc.flag, zaptest.NewLogger(t))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		st.Close()
		if fi, err := os.Stat(tc.cfg.Path); err != nil || fi.Size() == 0 {
			t.Errorf("%s: the file was not initialised: %v %v", tc.name, fi, err)
		}
		// Now an ordinary state file: it opens without the option.
		st, err = openStore(t.Context(), bridge.Config{State: bridge.StateConfig{Driver: "bolt", Path: tc.cfg.Path}}, false, zaptest.NewLogger(t))
		if err != nil {
			t.Fatalf("%s: reopening: %v", tc.name, err)
		}
		st.Close()
	}
}
