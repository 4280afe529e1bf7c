package main

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/upstream"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The walk-through as a script does it: start, paste the printed
// configuration, enroll with the device flow (auto-approved), read the
// sample mail over IMAP with XOAUTH2, revoke over HTTP, stop on a signal.
func TestWalkThrough(t *testing.T) {
	var out syncBuffer
	stop := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- run([]string{"-auto-approve", "-messages", "2"}, &out, stop) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "/fake/stats") {
		if time.Now().After(deadline) {
			t.Fatalf("no setup printed: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	printed := out.String()

	// The configuration snippet decodes into oauth.Config and works.
	start := strings.Index(printed, `provider = "generic"`)
	end := strings.Index(printed, `upstream_security = "none"`)
	if start < 0 || end < 0 {
		t.Fatalf("no configuration snippet in %q", printed)
	}
	var cfg oauth.Config
	if _, err := toml.Decode(printed[start:end+len(`upstream_security = "none"`)], &cfg); err != nil {
		t.Fatal(err)
	}
	c, err := oauth.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var instructions bytes.Buffer
	g, err := c.DeviceFlow(t.Context(), &instructions)
	if err != nil {
		t.Fatalf("device flow: %v (%s)", err, instructions.String())
	}

	addr, sec := c.Upstream()
	conn, err := upstream.Dial(t.Context(), upstream.Config{Address: addr, Security: sec, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Authenticate(t.Context(), upstream.NewXOAuth2Client("alice@example.com", g.AccessToken)); err != nil {
		t.Fatal(err)
	}
	st, err := conn.Select(t.Context(), "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if st.NumMessages != 2 {
		t.Errorf("INBOX has %d messages, want 2", st.NumMessages)
	}

	m := regexp.MustCompile(`curl -s -d user=\S+ (\S+/fake/revoke)`).FindStringSubmatch(printed)
	if m == nil {
		t.Fatalf("no revoke endpoint in %q", printed)
	}
	resp, err := http.PostForm(m[1], url.Values{"user": {"alice@example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "revoked 2 tokens") {
		t.Errorf("revoke answered %q", body)
	}
	if _, err := c.Refresh(t.Context(), g.RefreshToken); !strings.Contains(errString(err), "invalid_grant") {
		t.Errorf("refresh after revoke: %v", err)
	}

	stop <- syscall.SIGTERM
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "stopping") {
		t.Error("no stop message")
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
