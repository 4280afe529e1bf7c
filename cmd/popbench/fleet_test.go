package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// arrivals is a writer that notes when each of its octets arrived.
type arrivals struct {
	mu   sync.Mutex
	data []byte
	at   []time.Time // by octet
}

func (a *arrivals) Write(p []byte) (int, error) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.data = append(a.data, p...)
	for range p {
		a.at = append(a.at, now)
	}
	return len(p), nil
}

// TestDelayCopyShiftsEachChunk: with a delay, every octet comes out in
// order and at least the delay after it went in, and reading goes on
// while earlier chunks wait (latency, not a throughput limit).
func TestDelayCopyShiftsEachChunk(t *testing.T) {
	const delay = 300 * time.Millisecond
	pr, pw := io.Pipe()
	dst := &arrivals{}
	done := make(chan error, 1)
	var seen int
	go func() { done <- delayCopy(dst, pr, delay, func(k int) { seen += k }) }()

	var sent []byte
	var sentAt []time.Time // by octet
	for i := range 20 {
		chunk := []byte(fmt.Sprintf("chunk %02d %s\n", i, strings.Repeat(string(rune('a'+i)), i*100)))
		now := time.Now()
		if _, err := pw.Write(chunk); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, chunk...)
		for range chunk {
			sentAt = append(sentAt, now)
		}
	}
	allWritten := time.Now()
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data, sent) {
		t.Fatalf("forwarded %d octets, not the %d sent in order", len(dst.data), len(sent))
	}
	if seen != len(sent) {
		t.Errorf("seen %d octets, want %d", seen, len(sent))
	}
	for i, at := range dst.at {
		if d := at.Sub(sentAt[i]); d < delay {
			t.Fatalf("octet %d forwarded %v after it was sent, want at least %v", i, d, delay)
		}
	}
	// The 20 writes into the pipe each waited for a read: they all
	// returned before the first chunk came out, so the chunks were read
	// while the first one was still held back.
	if !allWritten.Before(dst.at[0]) {
		t.Errorf("the source was read only as the chunks went out (last write %v, first arrival %v)", allWritten, dst.at[0])
	}
}

func TestDelayCopyWithoutDelay(t *testing.T) {
	var dst bytes.Buffer
	src := strings.Repeat("0123456789", 10000)
	n := 0
	if err := delayCopy(&dst, strings.NewReader(src), 0, func(k int) { n += k }); err != nil {
		t.Fatal(err)
	}
	if dst.String() != src || n != len(src) {
		t.Errorf("copied %d octets (seen %d), want %d", dst.Len(), n, len(src))
	}
}

// TestDelayProxyRoundTrip: through "popbench proxy -delay D", a request
// and its answer take at least 2 D, and the counters see every octet.
func TestDelayProxyRoundTrip(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	const delay = 100 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(t.TempDir(), "stats")
	p := &counter{to: echo.Addr().String(), stats: stats, delay: delay, written: proxyStats{Conns: -1}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.serve(ctx, ln, 10) }()
	defer func() { cancel(); <-done }()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	var want bytes.Buffer
	for i := range 3 {
		line := fmt.Sprintf("line %d\n", i)
		start := time.Now()
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*delay {
			t.Errorf("round trip %d took %v, want at least %v", i, rtt, 2*delay)
		}
		if got != line {
			t.Errorf("echo %q, want %q", got, line)
		}
		want.WriteString(line)
	}
	c.Close()
	s, err := waitIdle(stats, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if s.Conns != 1 || s.Up != int64(want.Len()) || s.Down != int64(want.Len()) {
		t.Errorf("counters %+v, want 1 connection and %d octets each way", s, want.Len())
	}
}

func TestQuantileAndSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose: summarize sorts
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := summarize(d)
	want := durStats{n: 100, min: time.Millisecond, p50: 50 * time.Millisecond, p90: 90 * time.Millisecond,
		p99: 99 * time.Millisecond, max: 100 * time.Millisecond, mean: 50500 * time.Microsecond}
	if s != want {
		t.Errorf("summarize(1..100 ms) = %+v, want %+v", s, want)
	}
	if d[0] != 100*time.Millisecond {
		t.Error("summarize sorted its argument")
	}
	// Nearest rank: with 3 values, p50 is the 2nd and p99 the 3rd.
	three := []float64{1, 2, 3}
	if quantile(three, 0.5) != 2 || quantile(three, 0.99) != 3 || quantile(three, 0) != 1 || quantile(three, 1) != 3 {
		t.Errorf("quantiles of 1,2,3: %v %v %v %v", quantile(three, 0), quantile(three, 0.5), quantile(three, 0.99), quantile(three, 1))
	}
	if quantile([]float64(nil), 0.5) != 0 || (summarize(nil) != durStats{}) {
		t.Error("empty input")
	}
}

// dovecotLog is an excerpt of Dovecot 2.3's log (login_log_format, info
// level), with lines that must not count.
const dovecotLog = `Dec 03 13:10:01 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for imap, pop3
Dec 03 13:10:02 imap-login: Info: Login: user=<f001@dyn.example.com>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=4242, secured, session=<abc>
Dec 03 13:10:02 imap(f001@dyn.example.com)<4242><abc>: Info: Logged out in=66 out=1034 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0
Dec 03 13:10:02 pop3-login: Info: Login: user=<f002@dyn.example.com>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=4243, secured, session=<def>
Dec 03 13:10:03 imap-login: Info: Disconnected (auth failed, 1 attempts in 0 secs): user=<x@example.com>, method=PLAIN, rip=127.0.0.1
Dec 03 13:10:03 auth: Info: passwd-file(x@example.com,127.0.0.1): unknown user
Dec 03 13:10:04 imap-login: Info: Login: user=<f003@dyn.example.com>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=4244, secured, session=<ghi>
`

func TestCountLogins(t *testing.T) {
	n, err := countLogins(strings.NewReader(dovecotLog), defaultLoginMatch)
	if err != nil || n != 2 {
		t.Errorf("countLogins = %d, %v; want 2 IMAP logins", n, err)
	}
	n, _ = countLogins(strings.NewReader(dovecotLog), "pop3-login: Info: Login: ")
	if n != 1 {
		t.Errorf("%d POP3 logins, want 1", n)
	}
	// A very long line and a last line without its LF.
	long := strings.Repeat("x", 200<<10) + " imap-login: Info: Login: \n" + "imap-login: Info: Login: user=<last>"
	n, err = countLogins(strings.NewReader(long), defaultLoginMatch)
	if err != nil || n != 1 {
		t.Errorf("long lines: %d, %v; want 1 (the last line; the long one only matches past the buffer)", n, err)
	}
}

// TestLoginCountFromOffset: only what the log gained after the start
// counts.
func TestLoginCountFromOffset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dovecot.log")
	if err := os.WriteFile(path, []byte(dovecotLog), 0o644); err != nil {
		t.Fatal(err)
	}
	lc, err := startLoginCount(path, defaultLoginMatch)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(strings.Repeat("Dec 03 13:11:00 imap-login: Info: Login: user=<g@dyn.example.com>, method=PLAIN\n", 3))
	f.Close()
	if n, err := lc.finish(2 * time.Second); err != nil || n != 3 {
		t.Errorf("finish = %d, %v; want 3", n, err)
	}
}

func TestParseProcStat(t *testing.T) {
	// comm with spaces and parentheses; fields 14–17 are 11 12 13 14.
	line := "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 1 2 3 4 11 12 13 14 20 0 1 0 100 1000 50\n"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if (st != procStat{ppid: 17, utime: 11, stime: 12, cutime: 13, cstime: 14}) {
		t.Errorf("%+v", st)
	}
	if _, err := parseProcStat([]byte("1 (x) S 0 1")); err == nil {
		t.Error("a short line parsed")
	}
	if _, err := parseCPUTargets("popbridge=1,upstream=x"); err == nil {
		t.Error("-cpu upstream=x accepted")
	}
	if ts, err := parseCPUTargets("popbridge=12, upstream=34"); err != nil || len(ts) != 2 || ts[1] != (cpuTarget{"upstream", 34}) {
		t.Errorf("%v, %v", ts, err)
	}
}

// TestTreeCPUCountsEndedChildren: the CPU of a child that ended and was
// waited for counts in its parent's tree.
func TestTreeCPUCountsEndedChildren(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	before, err := treeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A child that burns about 0.2–1 s of CPU and ends.
	cmd := exec.Command(sh, "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	after, err := treeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The tree gained at least the child's time, in whole ticks.
	if got, want := after-before, int64(child/(time.Second/clockTicks)); got < want || want < 1 {
		t.Errorf("tree CPU grew %d ticks; the child used %v (%d ticks)", got, child, want)
	}
	if _, err := treeCPU(1 << 30); err == nil {
		t.Error("a process that does not exist")
	}
}

// TestRotateFleet: with -rotate, 3 workers poll 7 accounts: every account
// is polled, in turn, and no account has two sessions at once.
func TestRotateFleet(t *testing.T) {
	f := newFakePOP3(t, testMessages(3))
	cfg := testConfig(f.addr)
	cfg.accounts = nil
	for i := range 7 {
		cfg.accounts = append(cfg.accounts, account{"u" + strconv.Itoa(i), "pass"})
	}
	cfg.rotate, cfg.sessions, cfg.rounds, cfg.warmup = true, 3, 7, true
	if err := warm(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	res, err := run(t.Context(), cfg)
	if err != nil || res.ok != 21 || res.failed != 0 {
		t.Fatalf("%v; %d ok, %d failed %v", err, res.ok, res.failed, res.firstErr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.overlaps != 0 {
		t.Errorf("%d logins of an account already in session", f.overlaps)
	}
	// 1 warm-up poll each, and 21 sessions over the 7 accounts: the turn
	// passes an account only when a session holds it, so each has at
	// least one (3 each, give or take the ones passed over while busy).
	total := 0
	for _, a := range cfg.accounts {
		total += f.logins[a.user]
		if f.logins[a.user] < 2 {
			t.Errorf("%s: %d logins, want the warm-up and at least 1 (%v)", a.user, f.logins[a.user], f.logins)
		}
	}
	if total != 7+21 {
		t.Errorf("%d logins in all, want 28 (%v)", total, f.logins)
	}
}

// TestAccountPoolWaits: with fewer accounts than workers, a worker waits
// for a free account, and a closed stop ends the wait.
func TestAccountPoolWaits(t *testing.T) {
	p := newAccountPool([]account{{"a", "p"}})
	stop := make(chan struct{})
	if i := p.acquire(stop); i != 0 {
		t.Fatalf("acquire = %d", i)
	}
	got := make(chan int)
	go func() { got <- p.acquire(stop) }()
	p.release(0)
	if i := <-got; i != 0 {
		t.Fatalf("second acquire = %d", i)
	}
	go func() { got <- p.acquire(stop) }()
	close(stop)
	p.wake()
	if i := <-got; i != -1 {
		t.Errorf("acquire after stop = %d, want -1", i)
	}
}

// TestLoadMainCPUAndLogins: -cpu and -login-log end up in the summary.
func TestLoadMainCPUAndLogins(t *testing.T) {
	f := newFakePOP3(t, testMessages(2))
	logPath := filepath.Join(t.TempDir(), "upstream.log")
	os.WriteFile(logPath, []byte(dovecotLog), 0o644)
	sum := filepath.Join(t.TempDir(), "summary")
	var out bytes.Buffer
	err := loadMain([]string{"-addr", f.addr, "-users", "a:pass,b:pass,c:pass", "-rotate", "-sessions", "2", "-rounds", "2",
		"-cpu", "self=" + strconv.Itoa(os.Getpid()), "-login-log", logPath, "-summary", sum}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	b, _ := os.ReadFile(sum)
	kv := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	if kv["ok"] != "4" || kv["upstream_logins"] != "0" || kv["upstream_logins_per_1000"] != "0.000" {
		t.Errorf("summary:\n%s", b)
	}
	if v, err := strconv.ParseFloat(kv["cpu_self_s"], 64); err != nil || v < 0 {
		t.Errorf("cpu_self_s=%q", kv["cpu_self_s"])
	}
	if _, err := strconv.ParseFloat(kv["cpu_self_s_per_1000"], 64); err != nil {
		t.Errorf("cpu_self_s_per_1000=%q", kv["cpu_self_s_per_1000"])
	}
	if !strings.Contains(out.String(), "cpu        self (pid") || !strings.Contains(out.String(), "0 login(s) in the log") {
		t.Errorf("report:\n%s", out.String())
	}
	if err := loadMain([]string{"-addr", f.addr, "-users", "a:pass", "-rotate", "-tag", "#"}, io.Discard); err == nil {
		t.Error("-rotate with -tag accepted")
	}
}

// fakeIMAP answers one imap-list session: a greeting, LOGIN, EXAMINE
// (with a literal in an untagged response), and a UID FETCH of n messages.
func fakeIMAP(t *testing.T, n int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br, bw := bufio.NewReader(c), bufio.NewWriter(c)
		bw.WriteString("* OK fake IMAP\r\n")
		bw.Flush()
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			tag, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
			switch {
			case strings.HasPrefix(cmd, `LOGIN "bob" "s\"ecret"`):
				fmt.Fprintf(bw, "%s OK logged in\r\n", tag)
			case strings.HasPrefix(cmd, "LOGIN"):
				fmt.Fprintf(bw, "%s NO wrong\r\n", tag)
			case strings.HasPrefix(cmd, "EXAMINE"):
				fmt.Fprintf(bw, "* %d EXISTS\r\n* OK [PERMANENTFLAGS ()] {11}\r\n%s OK no\r\nhere\r\n", n, tag)
				fmt.Fprintf(bw, "%s OK [READ-ONLY] done\r\n", tag)
			case cmd == "UID FETCH 1:* (UID RFC822.SIZE)":
				for i := 1; i <= n; i++ {
					fmt.Fprintf(bw, "* %d FETCH (UID %d RFC822.SIZE %d)\r\n", i, i*2, 100+i)
				}
				fmt.Fprintf(bw, "%s OK fetched\r\n", tag)
			case cmd == "LOGOUT":
				fmt.Fprintf(bw, "* BYE\r\n%s OK bye\r\n", tag)
				bw.Flush()
				return
			default:
				fmt.Fprintf(bw, "%s BAD %q\r\n", tag, cmd)
			}
			bw.Flush()
		}
	}()
	return ln.Addr().String()
}

func TestIMAPList(t *testing.T) {
	addr := fakeIMAP(t, 50)
	r, err := imapList(addr, "bob", `s"ecret`, "INBOX", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var octets int64
	for i := 1; i <= 50; i++ {
		octets += int64(100 + i)
	}
	if r.messages != 50 || r.octets != octets {
		t.Errorf("%d messages, %d octets; want 50, %d", r.messages, r.octets, octets)
	}
	if r.fetch <= 0 || r.total < r.login+r.examine+r.fetch {
		t.Errorf("times %+v", r)
	}
	if _, err := imapList(fakeIMAP(t, 1), "bob", "wrong", "INBOX", 10*time.Second); err == nil || !strings.Contains(err.Error(), "LOGIN") {
		t.Errorf("wrong password: %v", err)
	}
	sum := filepath.Join(t.TempDir(), "sum")
	var out bytes.Buffer
	if err := imapListMain([]string{"-addr", fakeIMAP(t, 3), "-user", "bob", "-pass", `s"ecret`, "-summary", sum, "-label", "x"}, &out); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(sum)
	if !strings.Contains(string(b), "messages=3\n") || !strings.Contains(string(b), "fetch_ms=") {
		t.Errorf("summary:\n%s", b)
	}
}

// TestSettle: a tree that only sleeps is quiet at the first look; one
// with a busy child is not, and the CPU it used is reported.
func TestSettle(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	self := []cpuTarget{{"self", os.Getpid()}}
	quiet, _, err := settle(self, 500*time.Millisecond, 0.5, 10*time.Second)
	if err != nil || !quiet {
		t.Errorf("an idle tree: quiet %v, %v", quiet, err)
	}
	// The loop ends by itself after 20 s, so that a test binary killed
	// before it kills the loop leaves nothing spinning.
	busy := exec.Command(sh, "-c", `end=$(( $(date +%s) + 20 )); while [ "$(date +%s)" -lt "$end" ]; do :; done`)
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	// A running loop gets some CPU in every half second, however busy
	// the machine: it never looks quiet.
	quiet, used, err := settle([]cpuTarget{{"busy", busy.Process.Pid}}, 500*time.Millisecond, 0.001, 1500*time.Millisecond)
	busy.Process.Kill()
	busy.Wait()
	if err != nil || quiet || used <= 0 {
		t.Errorf("a busy tree: quiet %v, %.2f s used, %v", quiet, used, err)
	}
	if err := settleMain([]string{"-cpu", "x"}, io.Discard); err == nil {
		t.Error("-cpu x accepted")
	}
	var out bytes.Buffer
	if err := settleMain([]string{"-cpu", "self=" + strconv.Itoa(os.Getpid()), "-every", "200ms", "-below", "0.5", "-max-time", "10s"}, &out); err != nil || !strings.HasPrefix(out.String(), "quiet after ") {
		t.Errorf("settle: %q, %v", out.String(), err)
	}
}
