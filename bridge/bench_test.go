package bridge

// Benchmarks and memory checks of the speed targets ("fast on large
// mailboxes", docs/benchmarks.md).
//
//	go test -run '^$' -bench . -benchmem ./bridge/            # figures (b.ReportMetric)
//	go test -run 'Memory|UpstreamBytes' -v ./bridge/          # the checked bounds
//
// The upstream here is imaptest.Synth, a small IMAP server that generates
// its mailboxes (any size, 100,000 messages or a 50 MB message) instead of
// storing them, and allocates next to nothing. The memory checks run it in
// a child process (the test binary again, TestSynthIMAPHelper), so that
// the heap measured is popbridge's alone. No test here asserts a time.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/popclient"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// TestSynthIMAPHelper is not a test: it is the child process that serves
// imaptest.Synth for the memory checks (imaptest.StartSynthProcess).
func TestSynthIMAPHelper(t *testing.T) { imaptest.SynthHelper(t) }

// ---------------------------------------------------------------------------
// popbridge in-process, and a minimal streaming POP3 client.

// startBenchServer serves popbridge (hide policy, bolt store in a temp
// dir, no logs) in front of upstream.
func startBenchServer(tb testing.TB, upstream string) *Server {
	tb.Helper()
	return startBenchServerWith(tb, upstream, "")
}

// startBenchServerWith is startBenchServer with more keys of [upstream].
func startBenchServerWith(tb testing.TB, upstream, upstreamKeys string) *Server {
	tb.Helper()
	// The upstream may be another machine's (BenchmarkExternalUpstream).
	if !strings.Contains(upstreamKeys, "security =") {
		upstreamKeys += "security = \"none\"\nallow_cleartext_remote = true\n"
	}
	text := fmt.Sprintf("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\naddress = %q\ntimeout = \"1m\"\n%s"+
		"[auth]\nallow_insecure_auth = true\n[delete]\npolicy = \"hide\"\n", upstream, upstreamKeys)
	// Up to 1,000 sessions of one account stay open, and log in, at once.
	cfg, err := ParseConfig(text + "[limits]\nmax_connections = 0\nmax_connections_per_ip = 0\n" +
		"max_login_failures_per_account = 0\nmax_sessions_per_account = 0\n")
	if err != nil {
		tb.Fatal(err)
	}
	return startBridge(tb, nil, withBaseConfig(cfg), withLogger(zap.NewNop())).srv
}

// benchPOP is the client of internal/popclient used so that it keeps
// nothing: multi-line answers are counted as they pass. It sets one
// deadline at the dial and none per read.
type benchPOP struct {
	*popclient.Conn
	conn net.Conn
}

func benchDial(addr string) (*benchPOP, error) {
	c, _, err := popclient.Dial(addr, popclient.Options{Buffer: 32 << 10})
	if err != nil {
		return nil, err
	}
	c.NetConn().SetDeadline(time.Now().Add(5 * time.Minute))
	return &benchPOP{Conn: c, conn: c.NetConn()}, nil
}

// cmd sends a command; an answer other than +OK is an error.
func (c *benchPOP) cmd(line string) (string, error) { return c.OK(line) }

// body reads a dot-terminated answer and returns its octets, unstuffed.
func (c *benchPOP) body() (int64, error) { return c.Count() }

func (c *benchPOP) login(user, pass string) error { return c.Login(user, pass) }

// poll is login, STAT, UIDL, QUIT; it returns the STAT count.
func benchPoll(addr, user string) (int, error) {
	c, err := benchDial(addr)
	if err != nil {
		return 0, err
	}
	defer c.conn.Close()
	if err := c.login(user, "pass"); err != nil {
		return 0, err
	}
	st, err := c.cmd("STAT")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(st)
	n, _ := strconv.Atoi(f[1])
	if _, err := c.cmd("UIDL"); err != nil {
		return 0, err
	}
	if _, err := c.body(); err != nil {
		return 0, err
	}
	_, err = c.cmd("QUIT")
	return n, err
}

// retr sends RETR n and returns the octets of the message.
func (c *benchPOP) retr(n int) (int64, error) {
	if _, err := c.cmd("RETR " + strconv.Itoa(n)); err != nil {
		return 0, err
	}
	return c.body()
}

// ---------------------------------------------------------------------------
// Memory sampling.

// memPeak samples the heap (runtime.ReadMemStats) and the process RSS
// (/proc/self/status VmRSS, Linux) every few milliseconds until stop.
type memPeak struct {
	heap, rss atomic.Int64 // peaks
	stopc     chan struct{}
	done      chan struct{}
}

func startMemPeak() *memPeak {
	p := &memPeak{stopc: make(chan struct{}), done: make(chan struct{})}
	p.sample(0)
	go func() {
		defer close(p.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for i := 1; ; i++ {
			select {
			case <-p.stopc:
				p.sample(0)
				return
			case <-t.C:
				p.sample(i)
			}
		}
	}()
	return p
}

func (p *memPeak) sample(i int) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if h := int64(ms.HeapAlloc); h > p.heap.Load() {
		p.heap.Store(h)
	}
	if i%5 == 0 {
		if r := vmRSS(); r > p.rss.Load() {
			p.rss.Store(r)
		}
	}
}

func (p *memPeak) stop() (heap, rss int64) {
	close(p.stopc)
	<-p.done
	return p.heap.Load(), p.rss.Load()
}

// liveHeap returns the heap in use after a full collection.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// vmRSS returns the resident set of this process in bytes, 0 when unknown.
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

const mib = 1 << 20

func mibs(n int64) string { return fmt.Sprintf("%.2f MB", float64(n)/mib) }

// ---------------------------------------------------------------------------
// Benchmarks.

// BenchmarkDecide is the sync decision for a 100,000-message record: it must
// not depend on the record's size.
func BenchmarkDecide(b *testing.B) {
	m := &state.Mailbox{Version: 3, Markers: state.Markers{UIDValidity: 7, UIDNext: 100_001, NumMessages: 100_000}}
	m.Entries = make([]state.Entry, 100_000)
	now := m.Markers
	b.ReportAllocs()
	for b.Loop() {
		if state.Decide(m, now) != state.PlanNone {
			b.Fatal("not PlanNone")
		}
	}
}

// BenchmarkPollUnchanged is a whole POP3 poll (connect, USER, PASS, STAT,
// UIDL, QUIT) of a mailbox that did not change since the last poll, at
// 1,000 and 100,000 messages. It reports the upstream octets of each poll
// (both directions), which must not grow with the mailbox.
func BenchmarkPollUnchanged(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			up := imaptest.NewSynth(b, map[string]imaptest.SynthBox{"alice": {N: n, Small: 3000, UIDValidity: 0x6b076fcb}})
			srv := startBenchServer(b, up.Addr())
			addr := srv.Addr().String()
			if got, err := benchPoll(addr, "alice"); err != nil || got != n {
				b.Fatalf("first poll: %d messages, %v", got, err)
			}
			srv.Bridge.records.bg.wait()      // the fingerprints, completed in the background
			time.Sleep(50 * time.Millisecond) // the upstream LOGOUT of the first poll
			up0, polls := up.Octets(), 0
			b.ReportAllocs()
			for b.Loop() {
				if got, err := benchPoll(addr, "alice"); err != nil || got != n {
					b.Fatalf("poll: %d messages, %v", got, err)
				}
				polls++
			}
			b.StopTimer()
			time.Sleep(50 * time.Millisecond)
			b.ReportMetric(float64(up.Octets()-up0)/float64(polls), "upstream-B/poll")
		})
	}
}

// BenchmarkRetr is the RETR pipe for one message of 1 MB and of 50 MB:
// "maildrop" calls the session's Retr into a discarding writer (upstream
// FETCH, CRLF check); "pop3" goes through the POP3 server and a client over
// TCP (dot-stuffing, socket). MB/s is the -benchmem column; allocs/op are
// popbridge's and the client's (the upstream allocates almost nothing).
func BenchmarkRetr(b *testing.B) {
	for _, size := range []int64{1 << 20, 50 << 20} {
		box := imaptest.SynthBox{N: 1, Small: 1000, Big: size, UIDValidity: 0x6b076fcb}
		name := fmt.Sprintf("%dMB", size>>20)
		b.Run(name+"/maildrop", func(b *testing.B) {
			up := imaptest.NewSynth(b, map[string]imaptest.SynthBox{"alice": box})
			srv := startBenchServer(b, up.Addr())
			md, err := srv.Bridge.Login(b.Context(), &pop3.ConnInfo{ID: "bench", RemoteAddr: &net.TCPAddr{}}, "alice", "pass")
			if err != nil {
				b.Fatal(err)
			}
			defer md.Close()
			b.SetBytes(box.Size(1))
			b.ReportAllocs()
			for b.Loop() {
				w, end := pop3.NewMessageWriter(io.Discard)
				if err := md.Retr(b.Context(), 1, w); err != nil {
					b.Fatal(err)
				}
				if err := end(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/pop3", func(b *testing.B) {
			up := imaptest.NewSynth(b, map[string]imaptest.SynthBox{"alice": box})
			srv := startBenchServer(b, up.Addr())
			c, err := benchDial(srv.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.conn.Close()
			if err := c.login("alice", "pass"); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(box.Size(1))
			b.ReportAllocs()
			for b.Loop() {
				c.conn.SetDeadline(time.Now().Add(5 * time.Minute))
				if n, err := c.retr(1); err != nil || n != box.Size(1) {
					b.Fatalf("RETR: %d octets, %v", n, err)
				}
			}
		})
	}
}

// BenchmarkRetrSequential retrieves every message of a 2,000-message
// mailbox (3 KB each) in one session, one RETR after another, as POP3
// clients do; the upstream is on loopback with no delay, so this is
// popbridge's own cost per message (one upstream round trip each, unless
// it reads ahead).
func BenchmarkRetrSequential(b *testing.B) {
	const n = 2000
	box := imaptest.SynthBox{N: n, Small: 3000, UIDValidity: 0x6b076fcb}
	up := imaptest.NewSynth(b, map[string]imaptest.SynthBox{"alice": box})
	srv := startBenchServer(b, up.Addr())
	addr := srv.Addr().String()
	if _, err := benchPoll(addr, "alice"); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(n * box.Size(2))
	b.ReportAllocs()
	var msgs int
	start := time.Now()
	for b.Loop() {
		c, err := benchDial(addr)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.login("alice", "pass"); err != nil {
			b.Fatal(err)
		}
		for i := 1; i <= n; i++ {
			if got, err := c.retr(i); err != nil || got != box.Size(uint32(i)) {
				b.Fatalf("RETR %d: %d octets, %v", i, got, err)
			}
			msgs++
		}
		c.cmd("QUIT")
		c.conn.Close()
	}
	b.ReportMetric(float64(msgs)/time.Since(start).Seconds(), "msgs/s")
}

// ---------------------------------------------------------------------------
// The bounds of the speed targets, checked. Skipped with -short; each is bounded by
// a child-process upstream and deadlines. They measure the heap (stable);
// RSS is logged, not checked.

// TestUnchangedPollUpstreamBytes: a poll of an unchanged mailbox costs the
// same upstream octets at 1,000 and at 100,000 messages (only the digits of
// EXISTS and UIDNEXT differ).
func TestUnchangedPollUpstreamBytes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	octets := map[int]int64{}
	for _, n := range []int{1_000, 100_000} {
		up := imaptest.NewSynth(t, map[string]imaptest.SynthBox{"alice": {N: n, Small: 3000, UIDValidity: 0x6b076fcb}})
		srv := startBenchServer(t, up.Addr())
		addr := srv.Addr().String()
		for i := range 3 {
			before := up.Octets()
			if got, err := benchPoll(addr, "alice"); err != nil || got != n {
				t.Fatalf("poll %d: %d messages, %v", i, got, err)
			}
			waitQuiet(up)
			if i > 0 {
				octets[n] = up.Octets() - before
			} else {
				t.Logf("%d messages: first poll (first sight): %d upstream octets", n, up.Octets()-before)
			}
		}
		t.Logf("%d messages: unchanged poll: %d upstream octets", n, octets[n])
	}
	if d := octets[100_000] - octets[1_000]; d < 0 || d > 16 {
		t.Errorf("an unchanged poll costs %d upstream octets at 1,000 messages and %d at 100,000; want the same (± the digits of EXISTS and UIDNEXT)",
			octets[1_000], octets[100_000])
	}
}

// waitQuiet waits until the server's octet count has not moved for 50 ms
// (popbridge logs out upstream right after QUIT), at most 2 s.
func waitQuiet(s *imaptest.Synth) {
	last := s.Octets()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if cur := s.Octets(); cur == last {
			return
		} else {
			last = cur
		}
	}
}

// TestRetr50MBMemory: RETR of a 50 MB message raises popbridge's heap by at
// most 8 MB (the speed targets: "RSS by at most 8 MB"; the heap is what can be
// measured stably, the RSS is logged).
func TestRetr50MBMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const bound = 8 * mib
	box := imaptest.SynthBox{N: 3, Small: 2000, Big: 50 << 20, UIDValidity: 0x6b076fcb}
	addr := imaptest.StartSynthProcess(t, map[string]imaptest.SynthBox{"alice": box})
	srv := startBenchServer(t, addr)
	c, err := benchDial(srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	if err := c.login("alice", "pass"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.retr(3); err != nil || n != box.Size(3) { // warm the path
		t.Fatalf("RETR 3: %d, %v", n, err)
	}
	heap0 := liveHeap()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	peak := startMemPeak()
	rss0 := peak.rss.Load() // after the collection: the scavenger may have returned memory since
	start := time.Now()
	n, err := c.retr(1)
	el := time.Since(start)
	heapPeak, rssPeak := peak.stop()
	runtime.ReadMemStats(&ms1)
	if err != nil || n != box.Size(1) {
		t.Fatalf("RETR 1: %d octets of %d, %v", n, box.Size(1), err)
	}
	t.Logf("RETR of %s in %v (%.0f MB/s): heap %s before, peak %s (+%s); allocated %s in %d objects during the RETR; RSS %s before, peak %s (+%s)",
		mibs(n), el.Round(time.Millisecond), float64(n)/1e6/el.Seconds(), mibs(heap0), mibs(heapPeak), mibs(heapPeak-heap0),
		mibs(int64(ms1.TotalAlloc-ms0.TotalAlloc)), ms1.Mallocs-ms0.Mallocs, mibs(rss0), mibs(rssPeak), mibs(rssPeak-rss0))
	if heapPeak-heap0 > bound {
		t.Errorf("the heap grew by %s during a 50 MB RETR; want at most %s", mibs(heapPeak-heap0), mibs(bound))
	}
}

// TestIdleSessionsMemory: 1,000 idle authenticated sessions use at most
// 100 MB in total (the speed targets): heap and goroutine stacks, measured after a
// collection with all sessions logged in (the client ends of the
// connections, in this process too, are a few hundred octets each).
func TestIdleSessionsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const sessions = 1000
	const bound = 100 * mib
	addr := imaptest.StartSynthProcess(t, map[string]imaptest.SynthBox{"alice": {N: 20, Small: 3000}})
	srv := startBenchServer(t, addr)
	paddr := srv.Addr().String()
	if _, err := benchPoll(paddr, "alice#warm"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	mem := func() (heap, stack int64) {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc), int64(ms.StackInuse)
	}
	heap0, stack0 := mem()
	g0 := runtime.NumGoroutine()
	conns := make([]net.Conn, sessions)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr sync.Once
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= sessions {
					return
				}
				c, err := benchDial(paddr)
				if err == nil {
					err = c.login("alice#d"+strconv.Itoa(i), "pass")
				}
				if err != nil {
					failed.Add(1)
					firstErr.Do(func() { t.Errorf("session %d: %v", i, err) })
					if c != nil {
						c.conn.Close()
					}
					continue
				}
				c.conn.SetDeadline(time.Time{})
				conns[i] = c.conn // the bufio.Reader is dropped: idle from now on
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d logins failed", failed.Load(), sessions)
	}
	heap1, stack1 := mem()
	g1 := runtime.NumGoroutine()
	total := heap1 - heap0 + stack1 - stack0
	t.Logf("%d idle sessions: heap +%s, stacks +%s, total %s = %.1f KB a session; %.1f goroutines a session",
		sessions, mibs(heap1-heap0), mibs(stack1-stack0), mibs(total), float64(total)/sessions/1024, float64(g1-g0)/sessions)
	if total > bound {
		t.Errorf("%d idle sessions use %s; want at most %s", sessions, mibs(total), mibs(bound))
	}
}

// TestListing100kMemory: a mailbox of 100,000 messages is listed at first
// sight, and polled unchanged, without holding much beyond the record
// itself (the speed targets: "not more than a few MB beyond the stored map"). The
// garbage collector runs at GOGC=10 here, so that the sampled heap peak is
// close to what is live at the peak.
func TestListing100kMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const n = 100_000
	const bound = 8 * mib // beyond the record
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	addr := imaptest.StartSynthProcess(t, map[string]imaptest.SynthBox{"alice": {N: n, Small: 3000}})
	srv := startBenchServer(t, addr)
	paddr := srv.Addr().String()

	heap0 := liveHeap()
	peak := startMemPeak()
	start := time.Now()
	if got, err := benchPoll(paddr, "alice"); err != nil || got != n {
		t.Fatalf("first poll: %d, %v", got, err)
	}
	firstTime := time.Since(start)
	// The fingerprints are completed in the background: what stays is
	// the completed record.
	srv.Bridge.records.bg.wait()
	completeTime := time.Since(start)
	firstPeak, _ := peak.stop()
	time.Sleep(100 * time.Millisecond)
	heapRec := liveHeap() // what stays: the record (cached or not) and caches
	record := heapRec - heap0

	peak = startMemPeak()
	start = time.Now()
	if got, err := benchPoll(paddr, "alice"); err != nil || got != n {
		t.Fatalf("second poll: %d, %v", got, err)
	}
	pollTime := time.Since(start)
	pollPeak, _ := peak.stop()

	t.Logf("%d messages: retained after the first poll %s (%.0f B a message); first poll (cheap listing) %v, fingerprints completed %v after its start, peak %s beyond the retained; unchanged poll %v, peak %s beyond the retained",
		n, mibs(record), float64(record)/n, firstTime.Round(time.Millisecond), completeTime.Round(time.Millisecond), mibs(firstPeak-heapRec),
		pollTime.Round(time.Millisecond), mibs(pollPeak-heapRec))
	if d := pollPeak - heapRec; d > bound {
		t.Errorf("an unchanged poll of %d messages holds %s beyond what stays between polls; want at most %s", n, mibs(d), mibs(bound))
	}
	if d := firstPeak - max(heapRec, heap0+record); d > 2*record+bound {
		t.Errorf("the first listing of %d messages holds %s beyond the record of %s; want at most twice the record plus %s", n, mibs(d), mibs(record), mibs(bound))
	}
}

// TestConcurrentPolls100kMemory: 50 sessions polling a 100,000-message
// mailbox at once (each its own device tag) keep popbridge's heap under
// 100 MB (the speed targets: "popbridge's own peak memory at most 100 MB"; the
// side-by-side run measures the process's VmHWM). Default GOGC: the peak
// includes the garbage the collector lets accumulate, as in production.
func TestConcurrentPolls100kMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const n, sessions, rounds = 100_000, 50, 4
	const bound = 100 * mib
	addr := imaptest.StartSynthProcess(t, map[string]imaptest.SynthBox{"alice": {N: n, Small: 3000}})
	srv := startBenchServer(t, addr)
	paddr := srv.Addr().String()
	if got, err := benchPoll(paddr, "alice"); err != nil || got != n {
		t.Fatalf("first poll: %d, %v", got, err)
	}
	srv.Bridge.records.bg.wait() // the fingerprints, completed in the background
	heap0 := liveHeap()
	peak := startMemPeak()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if got, err := benchPoll(paddr, "alice#c"+strconv.Itoa(i)); err != nil || got != n {
					if failed.Add(1) == 1 {
						t.Errorf("poll: %d messages, %v", got, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	heapPeak, rssPeak := peak.stop()
	t.Logf("%d sessions x %d polls of %d messages in %v (%.1f polls/s): heap %s after the first poll, peak %s; RSS peak %s",
		sessions, rounds, n, el.Round(time.Millisecond), float64(sessions*rounds)/el.Seconds(), mibs(heap0), mibs(heapPeak), mibs(rssPeak))
	if heapPeak > bound {
		t.Errorf("the heap peaked at %s with %d sessions polling at once; want at most %s", mibs(heapPeak), sessions, mibs(bound))
	}
}

// TestSynthIMAP checks the generated upstream itself: sizes are exact and
// the messages are what RETR delivers.
func TestSynthIMAP(t *testing.T) {
	box := imaptest.SynthBox{N: 4, Small: 1000, Big: 200_001, UIDValidity: 0x6b076fcb}
	for uid := uint32(1); uid <= 4; uid++ {
		var b bytes.Buffer
		if err := imaptest.WriteSynth(&b, uid, box.Size(uid)); err != nil {
			t.Fatal(err)
		}
		if int64(b.Len()) != box.Size(uid) || !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) || bytes.Count(b.Bytes(), []byte("\n")) != bytes.Count(b.Bytes(), []byte("\r\n")) {
			t.Fatalf("message %d: %d octets, want %d, CRLF only", uid, b.Len(), box.Size(uid))
		}
	}
	up := imaptest.NewSynth(t, map[string]imaptest.SynthBox{"alice": box})
	srv := startBenchServer(t, up.Addr())
	c, err := benchDial(srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	if err := c.login("alice", "pass"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 4; i++ {
		if n, err := c.retr(i); err != nil || n != box.Size(uint32(i)) {
			t.Errorf("RETR %d: %d octets, %v; want %d", i, n, err, box.Size(uint32(i)))
		}
	}
	if _, err := c.cmd("QUIT"); err != nil {
		t.Fatal(err)
	}
	if got, err := imaptest.ParseSynthSpec(imaptest.SynthSpec(map[string]imaptest.SynthBox{"bob": box})); err != nil || got["bob"].N != 4 || got["bob"].Big != 200_001 {
		t.Errorf("spec round trip: %v, %v", got, err)
	}
}

// BenchmarkExternalUpstream runs popbridge in this process in front of a
// real IMAP server, for profiling with the real upstream's latency:
//
//	POPBRIDGE_BENCH_UPSTREAM=127.0.0.1:13143 POPBRIDGE_BENCH_USER=b1k@dyn.example.com \
//	  go test -run '^$' -bench ExternalUpstream -benchtime 3x -cpuprofile cpu.out ./bridge/
//
// "poll" is one unchanged poll (login, STAT, UIDL, QUIT); "retr-all"
// retrieves every message in one session, one RETR after another. The
// client runs in this process too: its share shows in the profile as
// benchPOP. Skipped unless POPBRIDGE_BENCH_UPSTREAM is set.
func BenchmarkExternalUpstream(b *testing.B) {
	addr, user, pass := os.Getenv("POPBRIDGE_BENCH_UPSTREAM"), os.Getenv("POPBRIDGE_BENCH_USER"), os.Getenv("POPBRIDGE_BENCH_PASS")
	if addr == "" || user == "" {
		b.Skip("set POPBRIDGE_BENCH_UPSTREAM (host:port, cleartext IMAP) and POPBRIDGE_BENCH_USER")
	}
	if pass == "" {
		pass = "pass"
	}
	srv := startBenchServer(b, addr)
	paddr := srv.Addr().String()
	session := func(retrAll bool) (msgs int, octets int64) {
		c, err := benchDial(paddr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.conn.Close()
		if err := c.login(user, pass); err != nil {
			b.Fatal(err)
		}
		st, err := c.cmd("STAT")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.Fields(st)[1])
		if _, err := c.cmd("UIDL"); err != nil {
			b.Fatal(err)
		}
		if _, err := c.body(); err != nil {
			b.Fatal(err)
		}
		if retrAll {
			for i := 1; i <= n; i++ {
				c.conn.SetDeadline(time.Now().Add(time.Minute))
				m, err := c.retr(i)
				if err != nil {
					b.Fatalf("RETR %d: %v", i, err)
				}
				octets += m
			}
		}
		if _, err := c.cmd("QUIT"); err != nil {
			b.Fatal(err)
		}
		return n, octets
	}
	n, _ := session(false) // first sight
	b.Run("poll", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			session(false)
		}
		b.ReportMetric(float64(n), "msgs")
	})
	b.Run("retr-all", func(b *testing.B) {
		b.ReportAllocs()
		var total int64
		start := time.Now()
		for b.Loop() {
			_, o := session(true)
			total += o
		}
		b.ReportMetric(float64(total)/1e6/time.Since(start).Seconds(), "MB/s")
	})
}

// BenchmarkColdPoll is the first poll (login, STAT, UIDL, QUIT) of a
// 20,000- and a 100,000-message mailbox that popbridge has no record of
// yet ("poll"), next to the cheapest listing the upstream offers,
// UID FETCH 1:* (UID RFC822.SIZE) on a logged-in connection
// ("bare-listing"). The first poll must not take more than twice the bare
// listing: the fingerprints are completed in the background (see "Sync at
// login" in docs/architecture.md). "complete-ms" is the time from the
// start of the poll until the background completion stored the last
// fingerprint: how long a UIDVALIDITY change would cost the messages not
// fingerprinted yet their UIDLs. Each iteration starts popbridge on an
// empty state file; the start and the stop are not timed.
func BenchmarkColdPoll(b *testing.B) {
	for _, n := range []int{20_000, 100_000} {
		up := imaptest.NewSynth(b, map[string]imaptest.SynthBox{"alice": {N: n, Small: 3000, UIDValidity: 0x6b076fcb}})
		b.Run(strconv.Itoa(n)+"/poll", func(b *testing.B) {
			var complete time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				srv := startBenchServer(b, up.Addr())
				addr := srv.Addr().String()
				b.StartTimer()
				start := time.Now()
				if got, err := benchPoll(addr, "alice"); err != nil || got != n {
					b.Fatalf("first poll: %d messages, %v", got, err)
				}
				b.StopTimer()
				srv.Bridge.records.bg.wait()
				complete += time.Since(start)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				srv.Shutdown(ctx)
				cancel()
				b.StartTimer()
			}
			b.ReportMetric(float64(complete.Milliseconds())/float64(b.N), "complete-ms")
		})
		b.Run(strconv.Itoa(n)+"/bare-listing", func(b *testing.B) {
			ctx := b.Context()
			conn, err := upstream.Dial(ctx, upstream.Config{Address: up.Addr(), Security: upstream.SecurityNone, Timeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			if err := conn.Login(ctx, "alice", "pass"); err != nil {
				b.Fatal(err)
			}
			if _, err := conn.Select(ctx, "INBOX"); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				got := 0
				if err := conn.List(ctx, 1, false, func(upstream.Msg) error { got++; return nil }); err != nil || got != n {
					b.Fatalf("listing: %d messages, %v", got, err)
				}
			}
		})
	}
}

// BenchmarkPollWarm is an unchanged poll (connect, USER, PASS, STAT, UIDL,
// QUIT) of a 200-message mailbox with a warm upstream connection and
// without one (upstream.warm_ttl = 0), on loopback and with 20 ms added
// each way between popbridge and the upstream (delayProxy). It reports
// the share of polls served warm.
func BenchmarkPollWarm(b *testing.B) {
	const n = 200
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		for _, warm := range []bool{false, true} {
			name := fmt.Sprintf("delay=%v/cold", delay)
			keys := "warm_ttl = \"0s\"\n"
			if warm {
				name = fmt.Sprintf("delay=%v/warm", delay)
				keys = "warm_ttl = \"1m\"\n"
			}
			b.Run(name, func(b *testing.B) {
				up := imaptest.NewSynth(b, map[string]imaptest.SynthBox{"alice": {N: n, Small: 3000, UIDValidity: 0x6b076fcb}})
				addr := up.Addr()
				if delay > 0 {
					addr = delayProxy(b, addr, delay)
				}
				srv := startBenchServerWith(b, addr, keys)
				pop := srv.Addr().String()
				if got, err := benchPoll(pop, "alice"); err != nil || got != n {
					b.Fatalf("first poll: %d messages, %v", got, err)
				}
				reused0 := testutilCount(srv.metrics.warmReuses)
				polls := 0
				for b.Loop() {
					if got, err := benchPoll(pop, "alice"); err != nil || got != n {
						b.Fatalf("poll: %d messages, %v", got, err)
					}
					polls++
				}
				b.ReportMetric((testutilCount(srv.metrics.warmReuses)-reused0)/float64(polls), "warm/poll")
			})
		}
	}
}

// testutilCount is a counter's value.
func testutilCount(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

// delayProxy forwards TCP connections to target, each chunk in either
// direction delivered d after it was read (a link with d latency each
// way and no bandwidth limit). It stops when the test ends.
func delayProxy(tb testing.TB, target string, d time.Duration) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		type chunk struct {
			at time.Time
			b  []byte
		}
		ch := make(chan chunk, 1024)
		go func() {
			defer close(ch)
			for {
				buf := make([]byte, 32<<10)
				n, err := src.Read(buf)
				if n > 0 {
					ch <- chunk{time.Now().Add(d), buf[:n]}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.b); err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
	return ln.Addr().String()
}

// BenchmarkPollWarmDovecot is BenchmarkPollWarm against the real Dovecot
// of .ci/dovecot-start, over implicit TLS as in production (a fresh
// account holding 200 small messages); it skips without Dovecot.
func BenchmarkPollWarmDovecot(b *testing.B) {
	const n = 200
	addr, ca, domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_IMAPS_ADDR"), os.Getenv("POPBRIDGE_TEST_DOVECOT_CA_FILE"), os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
	if addr == "" || ca == "" || domain == "" {
		b.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_IMAPS_ADDR (see .ci/dovecot-start)")
	}
	user := freshUser(domain)
	raws := make([][]byte, n)
	for i := range raws {
		raws[i] = warmMessage(i)
	}
	imaptest.NewAdmin(b, os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR"), user, "pass").AppendMany("INBOX", raws)
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		// warm-idle: the warm connection is in IDLE when the next poll
		// comes (the pause between polls is not timed).
		for _, mode := range []string{"cold", "warm", "warm-idle"} {
			ttl := "1m"
			if mode == "cold" {
				ttl = "0s"
			}
			b.Run(fmt.Sprintf("delay=%v/%s", delay, mode), func(b *testing.B) {
				up := addr
				if delay > 0 {
					up = delayProxy(b, addr, delay)
				}
				srv := startBenchServerWith(b, up, fmt.Sprintf("security = \"tls\"\nca_file = %q\nwarm_ttl = %q\n", ca, ttl))
				pop := srv.Addr().String()
				poll := func() {
					c, err := benchDial(pop)
					if err != nil {
						b.Fatal(err)
					}
					defer c.conn.Close()
					if err := c.Login(user, "pass"); err != nil {
						b.Fatal(err)
					}
					if st, err := c.cmd("STAT"); err != nil || !strings.HasPrefix(st, "+OK "+strconv.Itoa(n)+" ") {
						b.Fatalf("STAT: %q, %v", st, err)
					}
					if _, err := c.cmd("UIDL"); err != nil {
						b.Fatal(err)
					}
					if _, err := c.body(); err != nil {
						b.Fatal(err)
					}
					if _, err := c.cmd("QUIT"); err != nil {
						b.Fatal(err)
					}
				}
				poll()
				reused0 := testutilCount(srv.metrics.warmReuses)
				polls := 0
				for b.Loop() {
					if mode == "warm-idle" {
						b.StopTimer()
						time.Sleep(1500 * time.Millisecond) // > upstream idleDelay
						b.StartTimer()
					}
					poll()
					polls++
				}
				b.ReportMetric((testutilCount(srv.metrics.warmReuses)-reused0)/float64(polls), "warm/poll")
			})
		}
	}
}
