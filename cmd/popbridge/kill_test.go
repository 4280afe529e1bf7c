package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/internal/popclient"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
)

// TestKillDuringUpdate (docs/reliability.md, "Faults"): the built binary,
// `popbridge serve`, is killed with SIGKILL in the middle of the UPDATE of
// a QUIT, with the command that carries it out held in a proxy in front of
// the upstream: either before the upstream got it, or after the upstream
// did it but before popbridge heard the answer. popbridge then starts again
// on the same state file. The client's next login must finish the stored
// intent: exactly the DELE'd messages are gone (as the policy says),
// nothing else changed, and every UIDL is what it was.
func TestKillDuringUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	for _, up := range []struct {
		name string
		new  func(t *testing.T) *killUpstream
	}{{"mem", killMemUpstream}, {"dovecot", killDovecotUpstream}} {
		for _, tc := range []struct {
			policy, pattern string
			answer          bool // hold the server's answer instead of the command
		}{
			{"move", " UID MOVE ", false},
			{"move", " UID MOVE ", true},
			{"expunge", " UID EXPUNGE ", false}, // after UID STORE +FLAGS (\Deleted)
			{"expunge", " UID EXPUNGE ", true},
		} {
			what := "command"
			if tc.answer {
				what = "answer"
			}
			t.Run(fmt.Sprintf("%s/%s/hold-%s", up.name, tc.policy, what), func(t *testing.T) {
				t.Parallel()
				killScenario(t, bin, up.new(t), tc.policy, tc.pattern, tc.answer)
			})
		}
	}
}

func killScenario(t *testing.T, bin string, up *killUpstream, policy, pattern string, holdAnswer bool) {
	for i := 1; i <= 5; i++ {
		up.append(t, "INBOX", killMessage(fmt.Sprintf("m%d", i)))
	}
	// Someone else's \Deleted message must survive every expunge.
	up.append(t, "INBOX", killMessage("others"), imap.FlagDeleted)
	before := up.messages(t, "INBOX")

	hp := newHoldProxy(t, up.addr)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "popbridge.toml")
	statePath := filepath.Join(dir, "state.db")
	cfg := fmt.Sprintf(`[server]
listen = "127.0.0.1:0"
[upstream]
address = %q
security = "none"
timeout = "30s"
[auth]
allow_insecure_auth = true
[delete]
policy = %q
move_to = "Trash"
[state]
path = %q
[log]
level = "info"
`, hp.addr, policy, statePath)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	p := startServe(t, bin, cfgPath)
	c := dialKillPOP(t, p.addr)
	c.ok("USER " + up.user + "#laptop")
	c.ok("PASS " + up.pass)
	baseline := c.uidl()
	if len(baseline) != len(before) {
		t.Fatalf("UIDL lists %d messages, the upstream holds %d", len(baseline), len(before))
	}
	c.ok("DELE 2")
	c.ok("DELE 4")
	hp.arm(pattern, holdAnswer)
	c.send("QUIT")
	if !hp.wait(20 * time.Second) {
		t.Fatalf("popbridge never sent %q", pattern)
	}
	want := map[uint32]bool{before[1].uid: true, before[3].uid: true}
	if holdAnswer {
		// The upstream carries the command out; wait until it has.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			left := 0
			for _, m := range up.messages(t, "INBOX") {
				if want[m.uid] {
					left++
				}
			}
			if left == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	p.kill(t)
	if line, err := c.r.ReadString('\n'); err == nil && strings.HasPrefix(line, "+OK") {
		t.Errorf("the client got %q for a QUIT whose UPDATE was killed", line)
	}
	hp.release()

	// Where the kill left the upstream, and the intent on disk.
	mid := map[uint32]killMsg{}
	for _, m := range up.messages(t, "INBOX") {
		mid[m.uid] = m
	}
	for _, m := range before {
		now, in := mid[m.uid]
		switch {
		case want[m.uid] && holdAnswer:
			if in {
				t.Errorf("UID %d still in INBOX though the upstream answered", m.uid)
			}
		case !in:
			t.Errorf("UID %d left INBOX before popbridge was restarted", m.uid)
		case want[m.uid] && policy == "expunge":
			if !slices.Contains(now.flags, `\deleted`) {
				t.Errorf("UID %d lacks \\Deleted: the kill was meant to hit between the flag and the expunge", m.uid)
			}
		case !slices.Equal(now.flags, m.flags):
			t.Errorf("UID %d flags changed from %v to %v before the UPDATE", m.uid, m.flags, now.flags)
		}
	}
	st, err := boltstore.Open(statePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := state.ClientKey{Mailbox: bridge.MailboxKey(bridge.DefaultUpstreamName, up.user, "INBOX"), Client: "laptop"}
	cl, err := st.LoadClient(context.Background(), key)
	st.Close()
	if err != nil || cl.Pending == nil || !slices.Equal(cl.Pending.UIDLs, []string{baseline[1], baseline[3]}) {
		t.Errorf("after the kill the pending intent of %v is %+v (%v), want UIDLs %s %s", key, cl.Pending, err, baseline[1], baseline[3])
	}

	// Restart on the same state file; the device's next login finishes it.
	p = startServe(t, bin, cfgPath)
	c = dialKillPOP(t, p.addr)
	c.ok("USER " + up.user + "#laptop")
	c.ok("PASS " + up.pass)
	after := c.uidl()
	wantUIDLs := []string{baseline[0], baseline[2], baseline[4], baseline[5]}
	if !slices.Equal(after, wantUIDLs) {
		t.Errorf("after the restart the client sees %v, want %v", after, wantUIDLs)
	}
	for i := range after {
		c.ok(fmt.Sprintf("RETR %d", i+1))
		got := c.multi()
		src := before[[]int{0, 2, 4, 5}[i]]
		if !bytes.Equal(got, src.raw) {
			t.Errorf("RETR %d after the restart: %d octets, the upstream holds %d", i+1, len(got), len(src.raw))
		}
	}
	c.ok("QUIT")
	other := dialKillPOP(t, p.addr)
	other.ok("USER " + up.user + "#phone")
	other.ok("PASS " + up.pass)
	if got := other.uidl(); !slices.Equal(got, wantUIDLs) {
		t.Errorf("another device sees %v, want %v", got, wantUIDLs)
	}
	other.ok("QUIT")

	// The upstream: exactly messages 2 and 4 went, as the policy says.
	inbox := map[uint32]killMsg{}
	for _, m := range up.messages(t, "INBOX") {
		inbox[m.uid] = m
	}
	trash := map[string]bool{}
	for _, m := range up.messages(t, "Trash") {
		trash[string(m.raw)] = true
	}
	lost := 0
	for _, m := range before {
		now, in := inbox[m.uid]
		switch {
		case want[m.uid]:
			if in {
				t.Errorf("UID %d was DELE'd + QUIT but is still in INBOX", m.uid)
			}
			if policy == "move" && !trash[string(m.raw)] {
				t.Errorf("UID %d was moved but is not in Trash", m.uid)
				lost++
			}
		case !in:
			t.Errorf("UID %d is gone but was not DELE'd", m.uid)
			lost++
		case !slices.Equal(now.flags, m.flags) || !bytes.Equal(now.raw, m.raw):
			t.Errorf("UID %d changed: flags %v -> %v", m.uid, m.flags, now.flags)
		}
	}
	if policy == "move" && len(trash) != 2 {
		t.Errorf("Trash holds %d messages, want 2", len(trash))
	}
	if policy == "expunge" && len(trash) != 0 {
		t.Errorf("Trash holds %d messages, want none", len(trash))
	}
	p.stop(t)
	if st, err = boltstore.Open(statePath, nil); err != nil {
		t.Fatal(err)
	}
	cl, err = st.LoadClient(context.Background(), key)
	st.Close()
	if err != nil || cl.Pending != nil {
		t.Errorf("after the replay the intent is still pending: %+v (%v)", cl.Pending, err)
	}
	t.Logf("killed with SIGKILL mid-UPDATE (%s, %s held): after the restart the intent was finished; %d messages lost; proxy saw %d connections", policy, map[bool]string{false: "command", true: "answer"}[holdAnswer], lost, hp.conns())
}

func killMessage(id string) []byte {
	return []byte("From: a@example.com\r\nTo: b@example.com\r\nSubject: kill test " + id +
		"\r\nMessage-ID: <" + id + "@kill.example.com>\r\n\r\nbody of " + id + "\r\n")
}

// --- popbridge serve as a process ---

type served struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startServe runs `popbridge serve -config cfg` and waits for its POP3
// address in the "popbridge started" log line.
func startServe(t *testing.T, bin, cfg string) *served {
	t.Helper()
	cmd := exec.Command(bin, "serve", "-config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &served{cmd: cmd, done: make(chan error, 1)}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				POP3 string `json:"pop3"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "popbridge started" {
				addrc <- line.POP3
			}
		}
		s.done <- cmd.Wait()
	}()
	select {
	case s.addr = <-addrc:
	case err := <-s.done:
		s.done <- err
		t.Fatalf("popbridge serve exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("popbridge serve did not start within 20s")
	}
	return s
}

// kill sends SIGKILL and waits for the process to end.
func (s *served) kill(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("popbridge did not die of SIGKILL")
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (s *served) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("popbridge exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("popbridge did not stop within 20s of SIGTERM")
	}
}

// --- a hold proxy: the part of the fault proxy this test needs ---

// holdProxy forwards TCP to the upstream. Once armed, when the client's
// stream contains pattern, it holds either the rest of that stream (the
// command never reaches the server) or, with answer, everything the
// server sends from then on (the command is carried out, its answer is
// lost). release drops what was held and forwards again.
type holdProxy struct {
	addr, target string
	ln           net.Listener

	mu      sync.Mutex
	pattern []byte
	answer  bool
	held    chan struct{} // closed when the pattern went by
	hold    bool          // holding
	resume  chan struct{} // closed by release
	n       int
}

func newHoldProxy(t *testing.T, target string) *holdProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{addr: ln.Addr().String(), target: target, ln: ln, resume: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.n++
			p.mu.Unlock()
			go p.serve(c)
		}
	}()
	return p
}

func (p *holdProxy) arm(pattern string, answer bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pattern, p.answer, p.held = []byte(pattern), answer, make(chan struct{})
}

func (p *holdProxy) wait(d time.Duration) bool {
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	select {
	case <-held:
		return true
	case <-time.After(d):
		return false
	}
}

func (p *holdProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold {
		p.hold = false
		close(p.resume)
		p.resume = make(chan struct{})
	}
	p.pattern = nil
}

func (p *holdProxy) conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func (p *holdProxy) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	var once sync.Once
	stop := func() { once.Do(func() { c.Close(); s.Close() }) }
	go p.pump(s, c, false, stop) // client → server
	p.pump(c, s, true, stop)     // server → client
}

// pump copies src to dst; toClient is the server's direction.
func (p *holdProxy) pump(dst, src net.Conn, toClient bool, stop func()) {
	defer stop()
	var tail []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			data := buf[:n]
			p.mu.Lock()
			if !toClient && p.pattern != nil && !p.hold {
				w := append(tail, data...)
				if i := bytes.Index(w, p.pattern); i >= 0 {
					p.hold = true
					close(p.held)
					if !p.answer {
						// Forward up to the pattern, hold the rest.
						end := i + len(p.pattern) - len(tail)
						if end > 0 {
							p.mu.Unlock()
							dst.Write(data[:end])
							p.mu.Lock()
						}
						data = nil
					}
				}
				tail = append([]byte(nil), w[max(0, len(w)-64):]...)
			}
			// Held: the client's stream (command mode) or the server's
			// (answer mode) waits, and what was read is dropped.
			holding := p.hold && (toClient == p.answer)
			resume := p.resume
			p.mu.Unlock()
			if holding {
				<-resume
				return
			}
			if len(data) > 0 {
				if _, err := dst.Write(data); err != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// --- upstreams ---

// killUpstream is an IMAP account with INBOX and Trash.
type killUpstream struct {
	addr, user, pass string
	admin            *imapclient.Client
	mu               sync.Mutex
}

type killMsg struct {
	uid   uint32
	flags []string // lower case, sorted, without \recent
	raw   []byte
}

// killMemUpstream is go-imap's in-process memory server.
func killMemUpstream(t *testing.T) *killUpstream {
	mem := imapmemserver.New()
	u := imapmemserver.NewUser("alice", "secret")
	for _, mb := range []string{"INBOX", "Trash"} {
		if err := u.Create(mb, nil); err != nil {
			t.Fatal(err)
		}
	}
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return newKillUpstream(t, ln.Addr().String(), "alice", "secret")
}

// killDovecotUpstream is a fresh account on the test Dovecot.
func killDovecotUpstream(t *testing.T) *killUpstream {
	addr, domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR"), os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
	if addr == "" || domain == "" {
		t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
	}
	var b [6]byte
	rand.Read(b[:])
	return newKillUpstream(t, addr, "k-"+hex.EncodeToString(b[:])+"@"+domain, "pass")
}

func newKillUpstream(t *testing.T, addr, user, pass string) *killUpstream {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	return &killUpstream{addr: addr, user: user, pass: pass, admin: c}
}

func (u *killUpstream) append(t *testing.T, mailbox string, raw []byte, flags ...imap.Flag) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	cmd := u.admin.Append(mailbox, int64(len(raw)), &imap.AppendOptions{Flags: flags})
	cmd.Write(raw)
	cmd.Close()
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
}

func (u *killUpstream) messages(t *testing.T, mailbox string) []killMsg {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	sd, err := u.admin.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatalf("SELECT %s: %v", mailbox, err)
	}
	defer func() { u.admin.Unselect().Wait() }()
	if sd.NumMessages == 0 {
		return nil
	}
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := u.admin.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatalf("FETCH %s: %v", mailbox, err)
	}
	var out []killMsg
	for _, m := range msgs {
		var fl []string
		for _, f := range m.Flags {
			if s := strings.ToLower(string(f)); s != `\recent` {
				fl = append(fl, s)
			}
		}
		slices.Sort(fl)
		out = append(out, killMsg{uid: uint32(m.UID), flags: fl, raw: m.FindBodySection(body)})
	}
	slices.SortFunc(out, func(a, b killMsg) int { return int(a.uid) - int(b.uid) })
	return out
}

// --- the tests' POP3 client ---

// killPOP is the byte-exact client of internal/popclient bound to a test.
type killPOP struct {
	t *testing.T
	c *popclient.Conn
	r *bufio.Reader
}

func dialKillPOP(t *testing.T, addr string) *killPOP {
	t.Helper()
	c, greet, err := popclient.Dial(addr, popclient.Options{Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("greeting %q: %v", greet, err)
	}
	t.Cleanup(func() { c.Close() })
	return &killPOP{t: t, c: c, r: c.Reader()}
}

func (p *killPOP) line() string {
	p.t.Helper()
	l, err := p.c.Line()
	if err != nil {
		p.t.Fatalf("reading: %v", err)
	}
	return l
}

func (p *killPOP) send(cmd string) {
	p.t.Helper()
	p.c.Send(cmd)
	if err := p.c.Flush(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *killPOP) ok(cmd string) {
	p.t.Helper()
	if _, err := p.c.OK(cmd); err != nil {
		p.t.Fatal(err) // the command's name and the answer, never the password
	}
}

// multi reads a multi-line body and undoes dot-stuffing.
func (p *killPOP) multi() []byte {
	p.t.Helper()
	b, err := p.c.Multi()
	if err != nil {
		p.t.Fatalf("multi-line response ended without the dot: %v", err)
	}
	return b
}

func (p *killPOP) uidl() []string {
	p.t.Helper()
	p.ok("UIDL")
	var u []string
	for _, l := range strings.Split(strings.TrimSuffix(string(p.multi()), "\r\n"), "\r\n") {
		if f := strings.Fields(l); len(f) == 2 {
			u = append(u, f[1])
		}
	}
	return u
}
