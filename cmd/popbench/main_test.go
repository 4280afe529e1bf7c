package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakePOP3 is a small POP3 server for the tests: one maildrop for every
// login (any user, password "pass"), answers pipelined commands in order,
// and dot-stuffs RETR.
type fakePOP3 struct {
	t        testing.TB
	addr     string
	msgs     [][]byte
	lieAbout int    // message number whose LIST size is 1 too small; 0: none
	locked   string // this user gets -ERR [IN-USE]
	retrs    atomic.Int64
	maxQueue atomic.Int64 // most RETR commands seen waiting at once
	sessions atomic.Int64

	mu        sync.Mutex
	inSession map[string]int // logged-in sessions now, by user
	logins    map[string]int // successful logins, by user
	overlaps  int            // logins of a user already in session
}

func newFakePOP3(t testing.TB, msgs [][]byte) *fakePOP3 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePOP3{t: t, addr: ln.Addr().String(), msgs: msgs}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				f.serve(c)
			}()
		}
	}()
	return f
}

func (f *fakePOP3) size(n int) int {
	s := len(f.msgs[n-1])
	if n == f.lieAbout {
		s--
	}
	return s
}

func (f *fakePOP3) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	f.sessions.Add(1)
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	bw.WriteString("+OK fake ready\r\n")
	user, loggedIn := "", false
	defer func() {
		if loggedIn {
			f.mu.Lock()
			f.inSession[user]--
			f.mu.Unlock()
		}
	}()
	for {
		if br.Buffered() == 0 {
			if bw.Flush() != nil {
				return
			}
		} else if b, _ := br.Peek(br.Buffered()); bytes.Count(b, []byte("RETR")) > 0 {
			if q := int64(bytes.Count(b, []byte("RETR"))); q > f.maxQueue.Load() {
				f.maxQueue.Store(q)
			}
		}
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		args := strings.Fields(line)
		if len(args) == 0 {
			bw.WriteString("-ERR empty\r\n")
			continue
		}
		num := func() int {
			if len(args) < 2 {
				return 0
			}
			n, _ := strconv.Atoi(args[1])
			if n < 1 || n > len(f.msgs) {
				return 0
			}
			return n
		}
		switch strings.ToUpper(args[0]) {
		case "USER":
			user = args[1]
			bw.WriteString("+OK\r\n")
		case "PASS":
			switch {
			case user == f.locked:
				bw.WriteString("-ERR [IN-USE] locked\r\n")
			case len(args) == 2 && args[1] == "pass":
				f.mu.Lock()
				if f.inSession == nil {
					f.inSession, f.logins = map[string]int{}, map[string]int{}
				}
				if f.inSession[user] > 0 {
					f.overlaps++
				}
				f.inSession[user]++
				f.logins[user]++
				f.mu.Unlock()
				loggedIn = true
				bw.WriteString("+OK logged in\r\n")
			default:
				bw.WriteString("-ERR [AUTH] no\r\n")
			}
		case "STAT":
			total := 0
			for i := range f.msgs {
				total += f.size(i + 1)
			}
			fmt.Fprintf(bw, "+OK %d %d\r\n", len(f.msgs), total)
		case "LIST", "UIDL":
			bw.WriteString("+OK\r\n")
			for i := range f.msgs {
				if strings.ToUpper(args[0]) == "LIST" {
					fmt.Fprintf(bw, "%d %d\r\n", i+1, f.size(i+1))
				} else {
					fmt.Fprintf(bw, "%d uid-%d\r\n", i+1, i+1)
				}
			}
			bw.WriteString(".\r\n")
		case "RETR":
			n := num()
			if n == 0 {
				bw.WriteString("-ERR no such message\r\n")
				continue
			}
			f.retrs.Add(1)
			fmt.Fprintf(bw, "+OK %d octets\r\n", f.size(n))
			for _, l := range bytes.SplitAfter(f.msgs[n-1], []byte("\r\n")) {
				if len(l) > 0 && l[0] == '.' {
					bw.WriteByte('.')
				}
				bw.Write(l)
			}
			bw.WriteString(".\r\n")
		case "QUIT":
			// The session ends before its answer goes out, as a
			// server releases its maildrop lock before it says +OK.
			if loggedIn {
				f.mu.Lock()
				f.inSession[user]--
				f.mu.Unlock()
				loggedIn = false
			}
			bw.WriteString("+OK bye\r\n")
			bw.Flush()
			return
		default:
			bw.WriteString("-ERR unknown\r\n")
		}
	}
}

// testMessages returns n CRLF messages with dot lines, a lone dot line and
// one line longer than popbench's read buffer.
func testMessages(n int) [][]byte {
	var out [][]byte
	for i := 1; i <= n; i++ {
		var b bytes.Buffer
		fmt.Fprintf(&b, "Subject: message %d\r\nMessage-ID: <%d@test>\r\n\r\n", i, i)
		b.WriteString(".starts with a dot\r\n..two dots\r\n.\r\nplain\r\n")
		if i == 2 {
			b.WriteString("." + strings.Repeat("x", 100<<10) + "\r\n")
		}
		b.WriteString(strings.Repeat("body line\r\n", i*10))
		out = append(out, b.Bytes())
	}
	return out
}

func testConfig(addr string) config {
	return config{
		addr: addr, accounts: []account{{"alice", "pass"}}, sessions: 3, rounds: 2, mode: modePoll,
		pipeline: 1, mixedRetr: 2, timeout: 10 * time.Second, maxTime: time.Minute, maxErrors: 100,
	}
}

func TestRunModes(t *testing.T) {
	msgs := testMessages(6)
	var total int64
	for _, m := range msgs {
		total += int64(len(m))
	}
	f := newFakePOP3(t, msgs)
	for _, tc := range []struct {
		mode     string
		pipeline int
		messages int   // per session
		octets   int64 // per session
	}{
		{modePoll, 1, 0, 0},
		{modeRetr, 1, 6, total},
		{modeRetr, 4, 6, total},
		{modeMixed, 1, 2, int64(len(msgs[4]) + len(msgs[5]))},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.mode, tc.pipeline), func(t *testing.T) {
			cfg := testConfig(f.addr)
			cfg.mode, cfg.pipeline, cfg.warmup = tc.mode, tc.pipeline, true
			if err := warm(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
			res, err := run(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.ok != 6 || res.failed != 0 {
				t.Fatalf("%d ok, %d failed (%v), want 6 ok", res.ok, res.failed, res.firstErr)
			}
			if len(res.total) != 6 || len(res.login) != 6 || res.listed != 6 {
				t.Errorf("%d latencies, %d logins, %d listed", len(res.total), len(res.login), res.listed)
			}
			for i, d := range res.total {
				if d <= 0 || d < res.login[i] {
					t.Errorf("session %d: total %v, login %v", i, d, res.login[i])
				}
			}
			if res.messages != 6*tc.messages || res.octets != 6*tc.octets {
				t.Errorf("retrieved %d messages, %d octets; want %d, %d", res.messages, res.octets, 6*tc.messages, 6*tc.octets)
			}
			if tc.messages > 0 && len(res.retrMBps) != 6 {
				t.Errorf("%d per-session throughputs, want 6", len(res.retrMBps))
			}
			if res.read <= res.octets {
				t.Errorf("read %d octets in all, fewer than the %d of the messages", res.read, res.octets)
			}
			var out bytes.Buffer
			printReport(&out, &report{res: res})
			for _, want := range []string{"6 ok, 0 failed", "sessions/s", "p50", "p99", "mean", "errors     none"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("report lacks %q:\n%s", want, out.String())
				}
			}
			if tc.messages > 0 && !strings.Contains(out.String(), "MB/s") {
				t.Errorf("report lacks MB/s:\n%s", out.String())
			}
		})
	}
}

func TestPipelineKeepsRETRsInFlight(t *testing.T) {
	f := newFakePOP3(t, testMessages(20))
	cfg := testConfig(f.addr)
	cfg.mode, cfg.pipeline, cfg.sessions, cfg.rounds = modeRetr, 8, 1, 1
	res, err := run(t.Context(), cfg)
	if err != nil || res.ok != 1 {
		t.Fatalf("%v, %+v", err, res)
	}
	if q := f.maxQueue.Load(); q < 2 || q > 8 {
		t.Errorf("at most %d RETRs seen waiting at once, want 2..8", q)
	}
}

func TestErrorsByKind(t *testing.T) {
	f := newFakePOP3(t, testMessages(3))
	f.lieAbout = 2
	f.locked = "bob"
	cfg := testConfig(f.addr)
	cfg.mode, cfg.sessions, cfg.rounds = modeRetr, 3, 1
	cfg.accounts = []account{{"alice", "pass"}, {"bob", "pass"}, {"carol", "wrong"}}
	res, err := run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{kindSize: 1, kindInUse: 1, kindAuth: 1}
	if res.ok != 0 || res.failed != 3 || fmt.Sprint(res.errors) != fmt.Sprint(want) {
		t.Errorf("%d ok, %d failed, errors %v; want %v", res.ok, res.failed, res.errors, want)
	}
	// A server that is not there: dial errors, and the run still ends.
	cfg = testConfig("127.0.0.1:1")
	cfg.maxErrors = 2
	res, err = run(t.Context(), cfg)
	if err != nil || res.ok != 0 || res.errors[kindDial] < 2 {
		t.Errorf("%v, %+v", err, res)
	}
}

func TestTagAndUsers(t *testing.T) {
	c := config{accounts: []account{{"a", "1"}, {"b", "2"}}, tag: "#"}
	if got := c.loginName(3); got != (account{"b#w3", "2"}) {
		t.Errorf("loginName(3) = %v", got)
	}
	if _, err := parseUsers("nopass"); err == nil {
		t.Error("user without a password accepted")
	}
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("# comment\n\nu1:p:with:colons\nu2:x\n"), 0o600)
	accs, err := readUserFile(path)
	if err != nil || len(accs) != 2 || accs[0] != (account{"u1", "p:with:colons"}) {
		t.Errorf("%v, %v", accs, err)
	}
}

// TestLoadMainWithProxy runs the command as a script would: through a
// counting proxy, with -summary, and checks the figures it writes.
func TestLoadMainWithProxy(t *testing.T) {
	f := newFakePOP3(t, testMessages(4))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(t.TempDir(), "stats")
	p := &counter{to: f.addr, stats: stats, written: proxyStats{Conns: -1}}
	if err := p.flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.serve(ctx, ln, 10) }()
	defer func() { cancel(); <-done }()

	sum := filepath.Join(t.TempDir(), "summary")
	var out bytes.Buffer
	err = loadMain([]string{"-addr", ln.Addr().String(), "-users", "alice:pass", "-sessions", "2", "-rounds", "3",
		"-mode", "retr", "-warmup", "-proxy-stats", stats, "-mem-pid", strconv.Itoa(os.Getpid()),
		"-summary", sum, "-label", "fake"}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	b, err := os.ReadFile(sum)
	if err != nil {
		t.Fatal(err)
	}
	kv := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	for k, want := range map[string]string{"label": "fake", "ok": "6", "failed": "0", "retr_messages": "24", "upstream_conns": "6", "errors": ""} {
		if kv[k] != want {
			t.Errorf("%s=%q, want %q\n%s", k, kv[k], want, b)
		}
	}
	// Through the proxy, "upstream" is the POP3 traffic itself here:
	// what the sessions read must be what came down.
	if kv["upstream_down"] != kv["bytes_read"] {
		t.Errorf("proxy counted %s octets down, the sessions read %s", kv["upstream_down"], kv["bytes_read"])
	}
	for _, k := range []string{"session_p50_ms", "session_p99_ms", "retr_mb_s_session_p50", "mem_pid_hwm_kb"} {
		if v, err := strconv.ParseFloat(kv[k], 64); err != nil || v <= 0 {
			t.Errorf("%s=%q, want a positive number", k, kv[k])
		}
	}
	if !strings.Contains(out.String(), "upstream   6 connection(s)") || !strings.Contains(out.String(), "memory     pid") {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestGenMaildir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "Maildir")
	if err := genMaildirMain([]string{"-dir", dir, "-n", "30", "-sizes", "mixed", "-seed", "7"}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "cur", "*"))
	if len(files) != 30 {
		t.Fatalf("%d files, want 30", len(files))
	}
	ids := map[string]bool{}
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(p)
		want := fmt.Sprintf(",S=%d,W=%d:2,", len(raw), len(raw)+bytes.Count(raw, []byte("\n")))
		if !strings.Contains(name, want) || bytes.Contains(raw, []byte("\r")) {
			t.Errorf("%s: want %s and LF line ends", name, want)
		}
		if len(raw) < 1024 || len(raw) > 500*1024+80 {
			t.Errorf("%s: %d octets, want 1 KB–500 KB", name, len(raw))
		}
		_, rest, _ := strings.Cut(string(raw), "Message-ID: ")
		id, _, _ := strings.Cut(rest, "\n")
		if ids[id] {
			t.Errorf("Message-ID %s twice", id)
		}
		ids[id] = true
	}
}
