package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pop3 "github.com/knadh/go-pop3"
)

// buildBinary builds popbridge once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "popbridge")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestDemoServesPOP3 runs `popbridge demo` as a user would and reads its
// mail with an independent POP3 client.
func TestDemoServesPOP3(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	cmd := exec.Command(bin, "demo", "-listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		cmd.Process.Kill()
	})

	// The first line names the POP3 address; the rest holds the curl lines.
	sc := bufio.NewScanner(stdout)
	var addr string
	var printed []string
	re := regexp.MustCompile(`POP3 on (127\.0\.0\.1:\d+)`)
	deadline := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	for sc.Scan() {
		printed = append(printed, sc.Text())
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
		}
		if strings.Contains(sc.Text(), "Ctrl-C") {
			break
		}
	}
	deadline.Stop()
	if addr == "" {
		t.Fatalf("demo printed no POP3 address:\n%s", strings.Join(printed, "\n"))
	}
	go func() {
		for sc.Scan() {
		}
		exited <- cmd.Wait()
	}()
	if !strings.Contains(strings.Join(printed, "\n"), "curl -s pop3://"+addr+"/ -u demo:demo") {
		t.Errorf("demo output lacks a ready-to-paste curl line:\n%s", strings.Join(printed, "\n"))
	}

	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	// knadh/go-pop3 on purpose: the demo is checked with a client written
	// independently of popbridge's own (internal/popclient).
	c, err := pop3.New(pop3.Opt{Host: host, Port: p, DialTimeout: 5 * time.Second}).NewConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Auth("demo", "demo"); err != nil {
		t.Fatalf("login: %v", err)
	}
	count, size, err := c.Stat()
	if err != nil || count != 5 || size <= 0 {
		t.Fatalf("STAT = %d %d %v, want 5 messages", count, size, err)
	}
	msgs, err := c.Uidl(0)
	if err != nil || len(msgs) != 5 {
		t.Fatalf("UIDL = %v %v", msgs, err)
	}
	raw, err := c.RetrRaw(1)
	if err != nil || !strings.Contains(raw.String(), "Subject: Welcome to popbridge") {
		t.Fatalf("RETR 1 = %q, %v", raw, err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("demo exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("demo did not stop within 20s of SIGTERM")
	}
}

// TestCommands checks the subcommands' answers to bad use.
func TestCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"ssl\"\n"), 0o600)
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[upstream]\naddress = \"127.0.0.1:143\"\nsecurity = \"none\"\n"), 0o600)
	tests := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"version"}, 0, "popbridge "},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"serve"}, 1, "-config"},
		{[]string{"check", "-config", bad}, 1, "upstream.security"},
		{[]string{"serve", "-config", bad}, 1, "upstream.security"},
		{[]string{"check", "-config", good}, 0, "configuration ok"},
		{[]string{"check", "-config", filepath.Join(dir, "missing.toml")}, 1, "no such file"},
	}
	for _, tc := range tests {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.wantCode || !strings.Contains(string(out), tc.want) {
			t.Errorf("popbridge %v: exit %d, output %q; want exit %d and %q", tc.args, code, out, tc.wantCode, tc.want)
		}
	}
}
