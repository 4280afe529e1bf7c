package main

import (
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHealthCommand: `popbridge health` reports the admin listener's
// answer and fails unless it is 200, for /healthz and /readyz.
func TestHealthCommand(t *testing.T) {
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz":
			w.Write([]byte("ok\n"))
		case r.URL.Path == "/readyz" && ready:
			w.Write([]byte("ready\n"))
		case r.URL.Path == "/readyz":
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready\nstore: connection refused\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	var out strings.Builder
	if err := health([]string{"-addr", addr}, &out); err != nil || out.String() != "ok\n" {
		t.Errorf("health: %v, printed %q", err, out.String())
	}
	out.Reset()
	err := health([]string{"-addr", addr, "-ready"}, &out)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(out.String(), "store: connection refused") {
		t.Errorf("health -ready while unready: %v, printed %q", err, out.String())
	}
	ready = true
	out.Reset()
	if err := health([]string{"-addr", addr, "-ready"}, &out); err != nil || out.String() != "ready\n" {
		t.Errorf("health -ready: %v, printed %q", err, out.String())
	}
	if err := health([]string{"-addr", "127.0.0.1:1"}, &out); err == nil {
		t.Error("health of a closed port succeeded")
	}
}

// TestStaticBuildStampsVersion builds popbridge the way contrib/build.sh
// and the Dockerfile do (no cgo, version in -ldflags) and checks that the
// binary reports the stamped version.
func TestStaticBuildStampsVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "popbridge")
	cmd := exec.Command("sh", "../../contrib/build.sh", bin)
	cmd.Env = append(cmd.Environ(), "VERSION=1.2.3-test")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("contrib/build.sh: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "popbridge 1.2.3-test" {
		t.Errorf("popbridge version: %v, %q", err, out)
	}
	if file, err := exec.LookPath("file"); err == nil {
		desc, _ := exec.Command(file, bin).CombinedOutput()
		if !strings.Contains(string(desc), "statically linked") {
			t.Errorf("the binary is not static: %s", desc)
		}
	}
}
