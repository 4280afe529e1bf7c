package bridge

// Hostile POP3 clients (docs/reliability.md): binary garbage, 1 MB lines,
// commands split byte by byte, thousands of pipelined commands, sessions
// that never read their responses, and many idle connections, against
// popbridge over the in-process memory server.
//
//	go test -race -count=1 -run 'TestHostile' ./bridge/
//
// Every case runs inside hostile.run, which asserts around it that:
//   - a well-behaved client on another goroutine keeps completing whole
//     sessions (login, STAT, UIDL, RETR compared byte for byte, QUIT)
//     while the case runs: other sessions are unaffected;
//   - the process heap stays bounded: HeapInuse after runtime.GC() is at
//     most hostileHeapAfter above what it was before the case, and at no
//     sample during the case (every 20 ms) more than hostilePeak above it.
//     A server that buffered what it cannot send, or a whole hostile
//     line, would go far beyond: the unread-RETR case alone asks for
//     5 × 1000 RETRs of a 4 MiB message, 20 GB;
//   - the upstream is untouched: the same messages with the same flags,
//     and not one command that changes a mailbox (STORE, EXPUNGE, COPY,
//     MOVE, CLOSE) reached it;
//   - the sessions end: the goroutine count comes back to where it was.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/popclient"
	"github.com/popbridge/popbridge/pop3"
)

// Bounds of hostileCase (see the file comment).
const (
	hostileHeapAfter = 64 << 20  // HeapInuse growth after the case and a GC
	hostilePeak      = 128 << 20 // HeapInuse growth at any sample during the case
	hostileBigSize   = 4 << 20   // the big message the unread-RETR case asks for
)

// hostile is the setup of the hostile cases: popbridge with short timeouts
// over a memory server holding hostileCorpus.
type hostile struct {
	t      *testing.T
	e      *env
	mem    *imaptest.MemServer
	msgs   [][]byte // the RETR payload of each message, by number - 1
	stat   string   // the STAT answer of a fresh session
	pop    *pop3.Server
	before []imaptest.Message
}

// Timeouts of the hostile server: short, so that the cases end quickly.
const (
	hostileAuthTimeout  = 2 * time.Second // idle time allowed before login
	hostileWriteTimeout = time.Second     // a write the client does not take
)

func newHostile(t *testing.T) *hostile {
	t.Helper()
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	h := &hostile{t: t, mem: mem}
	var total int
	for _, raw := range hostileCorpus() {
		mem.Append("INBOX", raw)
		h.msgs = append(h.msgs, payload(raw))
		total += len(payload(raw))
	}
	h.stat = fmt.Sprintf("+OK %d %d", len(h.msgs), total)
	h.e = startTunedEnv(t, up, func(s *pop3.Server) {
		s.WriteTimeout = hostileWriteTimeout
		h.pop = s
	}, func(c *Config) {
		c.Server.AuthTimeout = hostileAuthTimeout
		c.Limits.MaxSessionsPerAccount = 0 // idle-connections holds 20 sessions of one account
	})
	h.before = mem.Messages("INBOX")
	return h
}

// hostileCorpus: three small messages (one with dot lines) and a big one.
func hostileCorpus() [][]byte {
	var big bytes.Buffer
	big.Write(message("hostile-big", "four mebibytes", ""))
	for i := 0; big.Len() < hostileBigSize; i++ {
		fmt.Fprintf(&big, ".%07d a line of the big message that is long enough to fill it up quickly ...........\r\n", i)
	}
	return [][]byte{
		message("hostile-1", "first", "one\r\n"),
		message("hostile-2", "dots", ".\r\n..\r\n.x\r\nend\r\n"),
		message("hostile-3", "third", "three\r\n"),
		big.Bytes(),
	}
}

// startTunedEnv is newEnv with a hook that sets pop3.Server fields before
// the server accepts anything, and a logger that keeps to Info: thousands
// of hostile lines at Debug would only fill the test's memory.
func startTunedEnv(t *testing.T, up *upstreamEnv, tune func(*pop3.Server), mutate ...func(*Config)) *env {
	t.Helper()
	return startBridge(t, up, withPOP3Tune(tune), withLogLevel(zap.InfoLevel), withConfig(mutate...))
}

// heapInuse returns HeapInuse after a full GC.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// run runs fn as a subtest with the checks of the file comment
// around it.
func (h *hostile) run(name string, fn func(t *testing.T)) {
	h.t.Run(name, func(t *testing.T) {
		start := time.Now()
		h.mem.ResetCommands()
		goroutines := runtime.NumGoroutine()
		heap0 := heapInuse()

		// Sample the heap during the case.
		var peak atomic.Uint64
		stopSampler := make(chan struct{})
		samplerDone := make(chan struct{})
		go func() {
			defer close(samplerDone)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
				select {
				case <-stopSampler:
					return
				case <-tick.C:
				}
			}
		}()

		// A well-behaved client, all along.
		var sessions atomic.Int64
		var byErr error
		stopBy := make(chan struct{})
		byDone := make(chan struct{})
		go func() {
			defer close(byDone)
			for {
				if err := h.normalSession("bystander"); err != nil {
					byErr = err
					return
				}
				sessions.Add(1)
				select {
				case <-stopBy:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()

		fn(t)

		// One more whole session after the case, then stop the bystander.
		before := sessions.Load()
		deadline := time.Now().Add(10 * time.Second)
		for sessions.Load() <= before && byErr == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		close(stopBy)
		<-byDone
		close(stopSampler)
		<-samplerDone
		if byErr != nil {
			t.Errorf("a normal session running beside the hostile client failed: %v", byErr)
		} else if sessions.Load() <= before {
			t.Errorf("no normal session completed after the hostile client (%d during it)", before)
		}

		// The hostile sessions end (at the latest through the timeouts).
		deadline = time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > goroutines+5 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > goroutines+5 {
			t.Errorf("%d goroutines after the case, %d before: sessions did not end", n, goroutines)
		}

		heap1 := heapInuse()
		if heap1 > heap0+hostileHeapAfter {
			t.Errorf("HeapInuse grew from %d MiB to %d MiB (bound: +%d MiB)", heap0>>20, heap1>>20, hostileHeapAfter>>20)
		}
		if p := peak.Load(); p > heap0+hostilePeak {
			t.Errorf("HeapInuse reached %d MiB during the case, from %d MiB (bound: +%d MiB)", p>>20, heap0>>20, hostilePeak>>20)
		}
		h.checkUpstream(t)
		t.Logf("%s: %v, %d normal sessions beside it, HeapInuse %d → %d MiB (peak %d MiB)",
			name, time.Since(start).Round(time.Millisecond), sessions.Load(), heap0>>20, heap1>>20, peak.Load()>>20)
	})
}

// checkUpstream asserts that INBOX holds what it held, with the same
// flags, that nothing went to Trash, and that popbridge sent no command
// that changes a mailbox.
func (h *hostile) checkUpstream(t *testing.T) {
	t.Helper()
	after := h.mem.Messages("INBOX")
	if len(after) != len(h.before) {
		t.Errorf("INBOX holds %d messages, held %d", len(after), len(h.before))
	}
	for i := range min(len(after), len(h.before)) {
		a, b := after[i], h.before[i]
		if a.UID != b.UID || flagString(a) != flagString(b) || !bytes.Equal(a.Raw, b.Raw) {
			t.Errorf("INBOX message %d changed: UID %d flags %q → UID %d flags %q", i+1, b.UID, flagString(b), a.UID, flagString(a))
		}
	}
	if n := len(h.mem.Messages("Trash")); n != 0 {
		t.Errorf("Trash holds %d messages", n)
	}
	for _, c := range h.mem.CommandsNamed("STORE", "UID STORE", "EXPUNGE", "UID EXPUNGE", "COPY", "UID COPY", "MOVE", "UID MOVE", "CLOSE") {
		t.Errorf("popbridge sent %q upstream", c.Line)
	}
}

// normalSession is a well-behaved client that reports errors instead of
// failing the test, so it can run on its own goroutine: login with a
// device tag, STAT, UIDL, RETR of the first three messages compared byte
// for byte, QUIT. [IN-USE] is retried: the previous session of the same
// device may still be releasing its lock.
func (h *hostile) normalSession(device string) error {
	for try := 0; ; try++ {
		err := h.normalSessionOnce(device)
		if err == nil || !strings.Contains(err.Error(), "[IN-USE]") || try == 50 {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *hostile) normalSessionOnce(device string) error {
	conn, err := net.DialTimeout("tcp", h.e.addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	r := bufio.NewReader(conn)
	expect := func(cmd, prefix string) (string, error) {
		if cmd != "" {
			if _, err := io.WriteString(conn, cmd+"\r\n"); err != nil {
				return "", fmt.Errorf("sending %q: %w", cmd, err)
			}
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("after %q: %w", cmd, err)
		}
		line = strings.TrimSuffix(line, "\r\n")
		if !strings.HasPrefix(line, prefix) {
			return line, fmt.Errorf("%q answered %q, want %q", cmd, line, prefix)
		}
		return line, nil
	}
	if _, err := expect("", "+OK"); err != nil {
		return err
	}
	if _, err := expect("USER "+h.mem.User+"#"+device, "+OK"); err != nil {
		return err
	}
	if _, err := expect("PASS "+h.mem.Pass, "+OK"); err != nil {
		return err
	}
	if _, err := expect("STAT", h.stat); err != nil {
		return err
	}
	if _, err := expect("UIDL", "+OK"); err != nil {
		return err
	}
	if _, err := popclient.ReadMulti(r, func() {}); err != nil {
		return fmt.Errorf("UIDL listing: %w", err)
	}
	for n := 1; n <= 3; n++ {
		if _, err := expect(fmt.Sprintf("RETR %d", n), "+OK"); err != nil {
			return err
		}
		body, err := popclient.ReadMulti(r, func() {})
		if err != nil {
			return fmt.Errorf("RETR %d: %w", n, err)
		}
		if !bytes.Equal(body, h.msgs[n-1]) {
			return fmt.Errorf("RETR %d: %q, want %q", n, body, h.msgs[n-1])
		}
	}
	_, err = expect("QUIT", "+OK")
	return err
}

// dial connects a raw client and reads the greeting; the test then reads
// and writes the connection itself, with a read deadline of 10 seconds
// from now.
func (h *hostile) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c := dialPOP(t, h.e.addr)
	c.conn.SetDeadline(time.Time{})
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c.conn, c.r
}

// dialSmallWindow connects with a 4 KiB receive buffer, set before the
// connection is made so that the window stays small, and reads the
// greeting.
func (h *hostile) dialSmallWindow(t *testing.T) net.Conn {
	t.Helper()
	c, greet, err := popclient.Dial(h.e.addr, popclient.Options{Timeout: 10 * time.Second, Buffer: 512,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			return errors.Join(err, serr)
		}})
	if err != nil {
		t.Fatalf("greeting %q, %v", greet, err)
	}
	t.Cleanup(func() { c.Close() })
	if c.Reader().Buffered() != 0 {
		t.Fatalf("more than the greeting before any command: %d octets", c.Reader().Buffered())
	}
	conn := c.NetConn()
	conn.SetDeadline(time.Time{})
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// login dials and logs in with a device tag. As in env.session, [IN-USE]
// is retried for a few seconds: the server closes a connection it ends
// before it releases the maildrop lock.
func (h *hostile) login(t *testing.T, device string) (net.Conn, *bufio.Reader) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, r := h.dial(t)
		fmt.Fprintf(conn, "USER %s#%s\r\nPASS %s\r\n", h.mem.User, device, h.mem.Pass)
		u, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(u, "+OK") {
			t.Fatalf("USER: %q, %v", u, err)
		}
		p, err := r.ReadString('\n')
		if err == nil && strings.HasPrefix(p, "+OK") {
			return conn, r
		}
		conn.Close()
		if !strings.HasPrefix(p, "-ERR [IN-USE]") || time.Now().After(deadline) {
			t.Fatalf("PASS: %q, %v", p, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readToClose reads response lines until the server closes the
// connection. It fails the test if that takes longer than limit, and
// returns the lines (without CRLF). A reset counts as a close: the server
// may close while hostile input is still arriving.
func readToClose(t *testing.T, conn net.Conn, r *bufio.Reader, limit time.Duration) []string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(limit))
	var lines []string
	for {
		l, err := r.ReadString('\n')
		if l != "" {
			lines = append(lines, strings.TrimSuffix(l, "\r\n"))
		}
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the server did not close the connection within %v; last lines %q", limit, tail(lines, 3))
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("reading: %v", err)
		}
		return lines
	}
}

func tail(s []string, n int) []string { return s[max(0, len(s)-n):] }

// sendAsync writes data from another goroutine, ignoring errors (the
// server may close before taking it all): hostile input must not block
// the test when the server stops reading.
func sendAsync(conn net.Conn, data []byte) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
		conn.Write(data)
	}()
	return done
}

// garbage returns n random octets from a fixed seed, with NULs, 0xFF and
// bare CRs and LFs among them.
func garbage(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	copy(b, "\x00\xff\xfe\r\x00\n\xff")
	return b
}

// allERR asserts that every line is an -ERR and that there is one.
func allERR(t *testing.T, what string, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		// The server may reset the connection before the -ERR reaches the
		// client when hostile input is still arriving: a close is a valid
		// answer too.
		t.Logf("%s: closed without a response line", what)
	} else {
		t.Logf("%s: %d -ERR lines, the last %q, then closed", what, len(lines), lines[len(lines)-1])
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "-ERR") {
			t.Errorf("%s: answered %q, want only -ERR lines", what, l)
		}
	}
}

func TestHostile(t *testing.T) {
	if testing.Short() {
		t.Skip("hostile clients: skipped in -short mode")
	}
	h := newHostile(t)

	// Binary garbage before login: the first line is not a command, so the
	// server answers -ERR and closes (the stance against cross-protocol
	// attacks), whatever follows.
	h.run("garbage-before-login", func(t *testing.T) {
		for seed := uint64(1); seed <= 5; seed++ {
			conn, r := h.dial(t)
			sent := sendAsync(conn, garbage(seed, 64<<10))
			allERR(t, fmt.Sprintf("seed %d", seed), readToClose(t, conn, r, 5*time.Second))
			<-sent
		}
	})

	// Garbage after login: every line gets -ERR, and after MaxErrors the
	// server says "too many errors" and closes. The DELE sent first is not
	// applied: no QUIT. The device logs in again afterwards.
	h.run("garbage-after-login", func(t *testing.T) {
		for seed := uint64(11); seed <= 15; seed++ {
			conn, r := h.login(t, "garbage")
			fmt.Fprintf(conn, "DELE 1\r\n")
			if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
				t.Fatalf("DELE 1: %q", l)
			}
			sent := sendAsync(conn, garbage(seed, 64<<10))
			lines := readToClose(t, conn, r, 5*time.Second)
			allERR(t, fmt.Sprintf("seed %d", seed), lines)
			if len(lines) > pop3.DefaultMaxErrors+1 {
				t.Errorf("seed %d: %d -ERR lines, the server should have closed after %d errors", seed, len(lines), pop3.DefaultMaxErrors)
			}
			<-sent
		}
		if err := h.normalSession("garbage"); err != nil {
			t.Errorf("the device of the garbage sessions: %v", err)
		}
	})

	// A 1 MiB line: before login -ERR and a close; after login -ERR and
	// the session goes on; as a SASL response -ERR; without any line end
	// at all, a close by the auth timeout at the latest.
	h.run("1MiB-lines", func(t *testing.T) {
		huge := bytes.Repeat([]byte("A"), 1<<20)
		conn, r := h.dial(t)
		sent := sendAsync(conn, append(append([]byte("USER "), huge...), "\r\nCAPA\r\n"...))
		allERR(t, "before login", readToClose(t, conn, r, 5*time.Second))
		<-sent

		conn, r = h.login(t, "huge")
		sent = sendAsync(conn, append(append([]byte("LIST "), huge...), "\r\nSTAT\r\nQUIT\r\n"...))
		lines := readToClose(t, conn, r, 10*time.Second)
		<-sent
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "-ERR") || lines[1] != h.stat || !strings.HasPrefix(lines[2], "+OK") {
			t.Errorf("after login, a 1 MiB line then STAT and QUIT: %q, want -ERR, %q, +OK", lines, h.stat)
		}

		conn, r = h.dial(t)
		sent = sendAsync(conn, append(append([]byte("AUTH PLAIN\r\n"), huge...), "\r\nCAPA\r\n"...))
		lines = readToClose(t, conn, r, 10*time.Second)
		<-sent
		if len(lines) < 2 || lines[0] != "+ " || !strings.HasPrefix(lines[1], "-ERR") {
			t.Errorf("a 1 MiB SASL response: %q, want \"+ \" then -ERR", lines)
		}

		conn, r = h.dial(t)
		start := time.Now()
		sent = sendAsync(conn, huge) // and never a line end
		readToClose(t, conn, r, hostileAuthTimeout+5*time.Second)
		<-sent
		t.Logf("a 1 MiB line without an end was closed after %v", time.Since(start).Round(time.Millisecond))
	})

	// Malformed commands and arguments, fewer than MaxErrors per session:
	// each gets -ERR and the session goes on, before and after login.
	h.run("malformed-commands", func(t *testing.T) {
		exchange := func(conn net.Conn, r *bufio.Reader, cmd string) string {
			t.Helper()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, cmd+"\r\n"); err != nil {
				t.Fatalf("sending %q: %v", cmd, err)
			}
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%q: %v", cmd, err)
			}
			return strings.TrimSuffix(l, "\r\n")
		}
		mustERR := func(conn net.Conn, r *bufio.Reader, cmds ...string) {
			t.Helper()
			for _, cmd := range cmds {
				if l := exchange(conn, r, cmd); !strings.HasPrefix(l, "-ERR") {
					t.Errorf("%q answered %q, want -ERR", cmd, l)
				}
			}
		}
		conn, r := h.dial(t)
		mustERR(conn, r, "PASS no-user-yet", "USER", "STAT", "AUTH PLAIN !!!not-base64", "AUTH NO-SUCH-MECH")
		if l := exchange(conn, r, "USER "+h.mem.User+"#\x01\xff\xfe"); strings.HasPrefix(l, "+OK") {
			mustERR(conn, r, "PASS "+h.mem.Pass) // a device tag that is not printable
		}
		if l := exchange(conn, r, "USER "+strings.Repeat("u", 400)); strings.HasPrefix(l, "+OK") {
			mustERR(conn, r, "PASS "+h.mem.Pass)
		}
		exchange(conn, r, "USER "+h.mem.User+"#malformed")
		if l := exchange(conn, r, "PASS "+h.mem.Pass); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("login after malformed commands: %q", l)
		}
		if l := exchange(conn, r, "STAT"); l != h.stat {
			t.Errorf("STAT after 7 errors: %q, want %q", l, h.stat)
		}
		if l := exchange(conn, r, "QUIT"); !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT: %q", l)
		}

		// The error count is per session: a new one for each batch.
		conn, r = h.login(t, "malformed")
		mustERR(conn, r, "RETR 0", "RETR 99999999999999999999999999", "TOP 1", "TOP 1 -5", "LIST 1 2",
			"UIDL abc", "DELE 999", "RETR \u0661", "NOOP x")
		if l := exchange(conn, r, "STAT"); l != h.stat {
			t.Errorf("STAT after 9 errors: %q, want %q", l, h.stat)
		}
		if l := exchange(conn, r, "QUIT"); !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT: %q", l)
		}

		conn, r = h.login(t, "malformed")
		mustERR(conn, r, "RETR +1", "RETR 0x1", "TOP 1 1.5", "UIDL 5", "LIST -1", "RETR 1 2", "XYZZY", "USER x", "PASS x")
		if l := exchange(conn, r, "TOP 2 99999999999999999999999"); !strings.HasPrefix(l, "+OK") {
			t.Errorf("TOP with a huge line count: %q", l)
		} else if body, err := popclient.ReadMulti(r, func() {}); err != nil || !bytes.Equal(body, h.msgs[1]) {
			t.Errorf("TOP with a huge line count: %q, %v; want the whole message", body, err)
		}
		if l := exchange(conn, r, "QUIT"); !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT: %q", l)
		}
	})

	// A session sent one octet per write, with pauses, is answered exactly
	// as the same session sent in one write; that transcript holds the
	// right STAT and RETR.
	h.run("byte-by-byte", func(t *testing.T) {
		script := "CAPA\r\nUSER " + h.mem.User + "#bytes\r\nPASS " + h.mem.Pass + "\r\nSTAT\r\nLIST\r\nUIDL 2\r\n" +
			"RETR 2\r\nTOP 1 0\r\nNOOP\r\nRSET\r\nQUIT\r\n"
		transcript := func(chunks [][]byte, pause time.Duration) string {
			conn, err := net.DialTimeout("tcp", h.e.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var out []byte
			read := make(chan error, 1)
			go func() {
				conn.SetReadDeadline(time.Now().Add(15 * time.Second))
				var err error
				out, err = io.ReadAll(conn)
				read <- err
			}()
			for _, c := range chunks {
				if _, err := conn.Write(c); err != nil {
					t.Fatalf("writing: %v", err)
				}
				time.Sleep(pause)
			}
			if err := <-read; err != nil {
				t.Fatalf("reading: %v (got %q)", err, out)
			}
			return string(out)
		}
		whole := transcript([][]byte{[]byte(script)}, 0)
		retr := "\r\n" + string(dotStuff(h.msgs[1])) + ".\r\n" // after RETR 2's status line
		if !strings.Contains(whole, "\r\n"+h.stat+"\r\n") || !strings.Contains(whole, retr) || !strings.HasSuffix(whole, "+OK POP3 server signing off\r\n") {
			t.Fatalf("the session in one write: %q", whole)
		}
		var bytewise [][]byte
		for i := range len(script) {
			bytewise = append(bytewise, []byte{script[i]})
		}
		if got := transcript(bytewise, time.Millisecond); got != whole {
			t.Errorf("one octet per write: %q\nwant %q", got, whole)
		}
		// Random cuts, CR and LF apart or together.
		rng := rand.New(rand.NewPCG(7, 7))
		var chunks [][]byte
		for rest := []byte(script); len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(5))
			chunks, rest = append(chunks, rest[:n]), rest[n:]
		}
		if got := transcript(chunks, 2*time.Millisecond); got != whole {
			t.Errorf("random cuts: %q\nwant %q", got, whole)
		}
	})

	// 5000 STATs and a QUIT in one write: 5001 answers, in order, then a
	// close. Then 1000 rounds of LIST/UIDL/NOOP/RETR pipelined behind a
	// pipelined login (as mpop sends USER and PASS).
	h.run("pipelined", func(t *testing.T) {
		conn, r := h.login(t, "pipeline")
		sent := sendAsync(conn, append(bytes.Repeat([]byte("STAT\r\n"), 5000), "QUIT\r\n"...))
		lines := readToClose(t, conn, r, 15*time.Second)
		<-sent
		if len(lines) != 5001 {
			t.Fatalf("%d answers to 5000 STATs and a QUIT", len(lines))
		}
		for i, l := range lines[:5000] {
			if l != h.stat {
				t.Fatalf("answer %d: %q, want %q", i+1, l, h.stat)
			}
		}
		if !strings.HasPrefix(lines[5000], "+OK") {
			t.Errorf("QUIT: %q", lines[5000])
		}

		conn, r = h.dial(t)
		var b bytes.Buffer
		fmt.Fprintf(&b, "USER %s#pipeline\r\nPASS %s\r\n", h.mem.User, h.mem.Pass)
		const rounds = 1000
		for range rounds {
			b.WriteString("LIST 2\r\nUIDL 3\r\nNOOP\r\nRETR 1\r\n")
		}
		b.WriteString("QUIT\r\n")
		sent = sendAsync(conn, b.Bytes())
		conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		next := func() string {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			return strings.TrimSuffix(l, "\r\n")
		}
		for _, want := range []string{"+OK", "+OK"} { // USER, PASS
			if l := next(); !strings.HasPrefix(l, want) {
				t.Fatalf("pipelined login: %q", l)
			}
		}
		list2 := fmt.Sprintf("+OK 2 %d", len(h.msgs[1]))
		var uidl3 string
		for i := range rounds {
			if l := next(); l != list2 {
				t.Fatalf("round %d: LIST 2 answered %q, want %q", i+1, l, list2)
			}
			l := next()
			if uidl3 == "" {
				uidl3 = l
			}
			if !strings.HasPrefix(l, "+OK 3 ") || l != uidl3 {
				t.Fatalf("round %d: UIDL 3 answered %q (first %q)", i+1, l, uidl3)
			}
			if l := next(); l != "+OK" {
				t.Fatalf("round %d: NOOP answered %q", i+1, l)
			}
			if l := next(); !strings.HasPrefix(l, "+OK") {
				t.Fatalf("round %d: RETR 1 answered %q", i+1, l)
			}
			body, err := popclient.ReadMulti(r, func() {})
			if err != nil || !bytes.Equal(body, h.msgs[0]) {
				t.Fatalf("round %d: RETR 1 = %q, %v", i+1, body, err)
			}
		}
		if l := next(); !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT: %q", l)
		}
		<-sent
	})

	// Sessions that ask for the 4 MiB message a thousand times and never
	// read: the server's writes block, and the write timeout ends each
	// session (its maildrop lock is released: the device logs in again).
	// Before login, a flood of CAPA that is never read ends the same way.
	h.run("unread-responses", func(t *testing.T) {
		const sessions = 5
		start := time.Now()
		var wg sync.WaitGroup
		var conns []net.Conn
		for i := range sessions {
			conn, _ := h.login(t, fmt.Sprintf("unread%d", i))
			conns = append(conns, conn)
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-sendAsync(conn, bytes.Repeat([]byte("RETR 4\r\n"), 1000))
			}()
		}
		// A small receive buffer, so that the server's writes block soon.
		capa := h.dialSmallWindow(t)
		floodStart := time.Now()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-sendAsync(capa, bytes.Repeat([]byte("CAPA\r\n"), 200000))
		}()
		for i := range sessions {
			deadline := time.Now().Add(15 * time.Second)
			for {
				err := h.normalSessionOnce(fmt.Sprintf("unread%d", i))
				if err == nil {
					break
				}
				if !strings.Contains(err.Error(), "[IN-USE]") || time.Now().After(deadline) {
					t.Fatalf("device unread%d: %v", i, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		t.Logf("%d sessions that never read ended within %v (write timeout %v)", sessions, time.Since(start).Round(time.Millisecond), hostileWriteTimeout)
		// The CAPA flood is closed by the server too: after the write
		// timeout (and some slack), a read drains what the kernel buffered
		// and ends, far short of the 200 000 answers asked for (2 000 000
		// lines).
		time.Sleep(time.Until(floodStart.Add(hostileWriteTimeout + 2*time.Second)))
		r := bufio.NewReaderSize(capa, 64<<10)
		n := 0
		capa.SetReadDeadline(time.Now().Add(15 * time.Second))
		for {
			_, err := r.ReadSlice('\n')
			if err == nil || errors.Is(err, bufio.ErrBufferFull) {
				n++
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the unread CAPA flood was not closed (read %d lines)", n)
			}
			break
		}
		if n >= 2000000 {
			t.Errorf("the server answered all 200 000 CAPAs to a client that did not read")
		}
		t.Logf("the unread CAPA flood was closed after %d of 2 000 000 lines", n)
		for _, c := range conns {
			c.Close()
		}
		capa.Close()
		wg.Wait()
	})

	// Sessions that start a RETR of the 4 MiB message, read 100 KB of it
	// and hang up: each session ends at once (its device logs in again
	// right away, give or take the lock release), nothing is deleted.
	h.run("abandoned-retr", func(t *testing.T) {
		for i := range 5 {
			conn, r := h.login(t, "abandon")
			fmt.Fprintf(conn, "DELE 1\r\nRETR 4\r\n")
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(r, make([]byte, 100<<10)); err != nil {
				t.Fatalf("round %d: reading the start of RETR 4: %v", i, err)
			}
			conn.Close()
			start := time.Now()
			if err := h.normalSession("abandon"); err != nil {
				t.Fatalf("round %d: the device after an abandoned RETR: %v", i, err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("round %d: the abandoned session held its lock for %v", i, d.Round(time.Millisecond))
			}
		}
	})

	// Many idle connections: 300 that never send anything, 20 that drip
	// one octet every 200 ms and never end a line, and 20 logged in that
	// do nothing. The normal sessions go on meanwhile; the server closes
	// the silent and the dripping ones at the auth timeout (it bounds a
	// whole line, not each octet); the logged-in ones are still served
	// afterwards (their autologout is the RFC's 10 minutes).
	h.run("idle-connections", func(t *testing.T) {
		const silent, drip, loggedIn = 300, 20, 20
		var idle []net.Conn
		var readers []*bufio.Reader
		for range silent {
			c, r := h.dial(t)
			idle = append(idle, c)
			readers = append(readers, r)
		}
		stopDrip := make(chan struct{})
		defer close(stopDrip)
		for range drip {
			c, r := h.dial(t)
			idle = append(idle, c)
			readers = append(readers, r)
			go func() {
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stopDrip:
						return
					case <-tick.C:
					}
					c.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := c.Write([]byte("U")); err != nil {
						return
					}
				}
			}()
		}
		var active []net.Conn
		var activeR []*bufio.Reader
		for i := range loggedIn {
			c, r := h.login(t, fmt.Sprintf("idle%d", i))
			active = append(active, c)
			activeR = append(activeR, r)
		}
		if err := h.normalSession("among-idle"); err != nil {
			t.Errorf("a session among %d idle connections: %v", silent+loggedIn, err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		var open atomic.Int64
		for i, c := range idle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.SetReadDeadline(time.Now().Add(hostileAuthTimeout + 5*time.Second))
				if _, err := io.ReadAll(readers[i]); err != nil && !errors.Is(err, syscall.ECONNRESET) {
					open.Add(1)
				}
			}()
		}
		wg.Wait()
		if n := open.Load(); n > 0 {
			t.Errorf("%d of %d silent or dripping connections were not closed by the auth timeout (%v)", n, len(idle), hostileAuthTimeout)
		}
		t.Logf("%d silent and %d dripping connections closed within %v", silent, drip, time.Since(start).Round(time.Millisecond))
		for i, c := range active {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "STAT\r\nQUIT\r\n")
			for _, want := range []string{h.stat, "+OK"} {
				if l, err := activeR[i].ReadString('\n'); err != nil || !strings.HasPrefix(l, want) {
					t.Errorf("idle logged-in session %d: %q, %v; want %q", i, l, err, want)
				}
			}
		}
	})
}

// dotStuff is the RETR framing of a payload that ends with CRLF.
func dotStuff(p []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(p, []byte("\r\n")) {
		if len(l) > 0 && l[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(l)
	}
	return b.Bytes()
}
