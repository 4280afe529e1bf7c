// Package faultproxy is a TCP proxy for tests that sits between popbridge
// and its upstream IMAP server and breaks the connection on purpose: it
// cuts every connection (with a TCP RST or an orderly close) or stalls
// them (stops forwarding until released), either on command or when a byte
// pattern goes by in one direction, optionally a number of bytes after the
// pattern (to cut in the middle of a message literal). It reports what it
// saw: connections, bytes, the client's command lines and each fault it
// injected.
//
//	p := faultproxy.New(t, upstreamAddr)
//	r := p.On(faultproxy.ToServer, " UID EXPUNGE ", faultproxy.Reset)
//	... point the client at p.Addr ...
//	<-r.Fired()
//
// A rule fires once, on the first connection whose stream matches; the
// action then applies to every connection of the proxy. The bytes before
// the trigger point are forwarded; the bytes after it are not (Reset,
// Close) or not until Release (Stall).
package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Dir is a direction of a proxied connection.
type Dir int

const (
	// ToServer is client → upstream (IMAP commands).
	ToServer Dir = iota
	// ToClient is upstream → client (IMAP responses, message literals).
	ToClient
)

func (d Dir) String() string {
	if d == ToServer {
		return "client→server"
	}
	return "server→client"
}

// Action is what a rule does when it fires.
type Action int

const (
	// Reset aborts every connection with a TCP RST (SO_LINGER 0), on both
	// sides: the client and the upstream see "connection reset".
	Reset Action = iota
	// Close closes every connection in order (FIN) on both sides.
	Close
	// Stall stops forwarding on every connection, and on every new one,
	// until Release. Connections stay open.
	Stall
)

func (a Action) String() string {
	switch a {
	case Reset:
		return "reset"
	case Close:
		return "close"
	case Stall:
		return "stall"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Event is something the proxy did.
type Event struct {
	Time   time.Time
	Conn   int    // connection number, from 1; 0 for proxy-wide events
	What   string // "open", "fault", "release", "refused"
	Rule   string // for "fault": the rule that fired ("" when on command)
	Action Action // for "fault"
	Dir    Dir    // for a rule's "fault": the direction it watched
	Offset int64  // for a rule's "fault": the stream offset of the trigger point
}

func (e Event) String() string {
	switch e.What {
	case "fault":
		if e.Rule == "" {
			return fmt.Sprintf("%s on command", e.Action)
		}
		return fmt.Sprintf("%s: %s on conn %d after %d octets %s", e.Rule, e.Action, e.Conn, e.Offset, e.Dir)
	case "open", "refused":
		return fmt.Sprintf("conn %d %s", e.Conn, e.What)
	}
	return e.What
}

// Rule is an armed trigger, returned by On and After.
type Rule struct {
	name    string
	dir     Dir
	pattern []byte
	after   int64
	action  Action

	p      *Proxy
	refuse bool // also refuse new connections once fired (under p.mu)
	fired  chan struct{}
	once   sync.Once
	ev     Event // valid once fired
}

// AndRefuse makes the rule, when it fires, also refuse every new
// connection until Refuse(false): the upstream stays down, so a client
// cannot reconnect. It returns r.
func (r *Rule) AndRefuse() *Rule {
	r.p.mu.Lock()
	r.refuse = true
	r.p.mu.Unlock()
	return r
}

// Fired is closed when the rule has fired (the action is in effect).
func (r *Rule) Fired() <-chan struct{} { return r.fired }

// Event returns the "fault" event of the rule; ok is false before it fired.
func (r *Rule) Event() (ev Event, ok bool) {
	select {
	case <-r.fired:
		r.p.mu.Lock()
		defer r.p.mu.Unlock()
		return r.ev, true
	default:
		return Event{}, false
	}
}

// Wait waits at most d for the rule to fire and reports whether it did.
func (r *Rule) Wait(d time.Duration) bool {
	select {
	case <-r.fired:
		return true
	case <-time.After(d):
		return false
	}
}

// Proxy is a running fault proxy on 127.0.0.1.
type Proxy struct {
	// Addr is where clients connect (127.0.0.1:port).
	Addr string
	// Target is the upstream address.
	Target string

	ln net.Listener

	mu      sync.Mutex
	conns   map[int]*pconn
	nextID  int
	rules   []*Rule
	events  []Event
	stall   chan struct{} // non-nil while stalled; closed by Release
	refuse  bool
	closed  bool
	bytes   [2]int64
	cmds    []string // client command lines (ToServer), bounded
	cmdBuf  map[int][]byte
	faults  int
	wg      sync.WaitGroup
	logf    func(format string, args ...any)
	maxCmds int
}

// New starts a proxy in front of target; it stops when the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	p.mu.Lock()
	p.logf = t.Logf
	p.mu.Unlock()
	t.Cleanup(func() {
		p.mu.Lock()
		p.logf = nil
		p.mu.Unlock()
		p.Close()
	})
	return p
}

// Start starts a proxy in front of target. Close stops it.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		Addr: ln.Addr().String(), Target: target, ln: ln,
		conns: make(map[int]*pconn), cmdBuf: make(map[int][]byte), maxCmds: 10000,
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// On arms a rule: when pattern has gone through in direction dir on some
// connection, do action. The pattern itself is forwarded.
func (p *Proxy) On(dir Dir, pattern string, action Action) *Rule {
	return p.add(dir, []byte(pattern), 0, action)
}

// After arms a rule that fires n octets after pattern has gone through in
// direction dir: those n octets are forwarded, nothing after them (for
// example pattern "BODY[] {" with ToClient cuts n octets into a message
// literal, counting from the literal's size announcement). With an empty
// pattern it fires after the first n octets of a connection.
func (p *Proxy) After(dir Dir, pattern string, n int64, action Action) *Rule {
	return p.add(dir, []byte(pattern), n, action)
}

// maxPattern is the longest pattern a rule may have.
const maxPattern = 1024

func (p *Proxy) add(dir Dir, pattern []byte, after int64, action Action) *Rule {
	if len(pattern) > maxPattern {
		panic("faultproxy: pattern too long")
	}
	name := fmt.Sprintf("%q %s", pattern, dir)
	if after > 0 {
		name = fmt.Sprintf("%d octets after %s", after, name)
	}
	r := &Rule{name: name, dir: dir, pattern: pattern, after: after, action: action, p: p, fired: make(chan struct{})}
	p.mu.Lock()
	p.rules = append(p.rules, r)
	p.mu.Unlock()
	return r
}

// Disarm removes every rule that has not fired.
func (p *Proxy) Disarm() {
	p.mu.Lock()
	p.rules = nil
	p.mu.Unlock()
}

// Cut aborts every open connection now, with a RST (Reset) or an orderly
// close (Close). New connections are still accepted.
func (p *Proxy) Cut(action Action) {
	if action == Stall {
		p.StallNow()
		return
	}
	p.fault(nil, action, 0, 0)
}

// StallNow stops forwarding on every connection until Release.
func (p *Proxy) StallNow() { p.fault(nil, Stall, 0, 0) }

// Release ends a stall: forwarding resumes where it stopped.
func (p *Proxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
		p.event(Event{What: "release"})
	}
}

// Refuse makes the proxy accept and at once reset new connections (the
// upstream is down) while on is true.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Events returns what the proxy did so far.
func (p *Proxy) Events() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events...)
}

// Faults returns how many faults (cuts and stalls) were injected.
func (p *Proxy) Faults() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

// Conns returns how many connections the proxy accepted.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nextID
}

// Bytes returns the octets forwarded in direction d.
func (p *Proxy) Bytes(d Dir) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes[d]
}

// Commands returns the lines the clients sent (ToServer), as forwarded, in
// order per connection, each prefixed with "connN: ". Literal data is not
// told apart from command lines.
func (p *Proxy) Commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.cmds...)
}

// Saw reports whether some client command line contained s.
func (p *Proxy) Saw(s string) bool {
	for _, c := range p.Commands() {
		if strings.Contains(c, s) {
			return true
		}
	}
	return false
}

// Report is a one-line summary for test logs.
func (p *Proxy) Report() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var evs []string
	for _, e := range p.events {
		if e.What != "open" {
			evs = append(evs, e.String())
		}
	}
	return fmt.Sprintf("faultproxy %s→%s: %d connections, %d octets to server, %d to client, %d faults [%s]",
		p.Addr, p.Target, p.nextID, p.bytes[ToServer], p.bytes[ToClient], p.faults, strings.Join(evs, "; "))
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
	conns := p.snapshot()
	p.mu.Unlock()
	p.ln.Close()
	for _, c := range conns {
		c.abort(Close)
	}
	p.wg.Wait()
}

func (p *Proxy) snapshot() []*pconn {
	out := make([]*pconn, 0, len(p.conns))
	for _, c := range p.conns {
		out = append(out, c)
	}
	return out
}

// event records ev; p.mu is held.
func (p *Proxy) event(ev Event) {
	ev.Time = time.Now()
	p.events = append(p.events, ev)
	if p.logf != nil && ev.What != "open" {
		p.logf("faultproxy: %s", ev)
	}
}

// fault carries out action for rule r (nil: on command) seen on conn id at
// offset; it returns the stall channel to wait on for Stall.
func (p *Proxy) fault(r *Rule, action Action, id int, offset int64) chan struct{} {
	p.mu.Lock()
	ev := Event{Conn: id, What: "fault", Action: action, Offset: offset}
	if r != nil {
		ev.Rule, ev.Dir = r.name, r.dir
		r.ev = ev
		if r.refuse {
			p.refuse = true
		}
		// Fired before the connections go: whoever sees them go can
		// already tell that the rule fired.
		r.once.Do(func() { close(r.fired) })
	}
	p.faults++
	p.event(ev)
	var conns []*pconn
	var stall chan struct{}
	if action == Stall {
		if p.stall == nil {
			p.stall = make(chan struct{})
		}
		stall = p.stall
	} else {
		conns = p.snapshot()
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.abort(action)
	}
	return stall
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.nextID++
		id := p.nextID
		refuse, closed := p.refuse, p.closed
		if refuse {
			p.event(Event{Conn: id, What: "refused"})
		} else {
			p.event(Event{Conn: id, What: "open"})
		}
		p.mu.Unlock()
		if refuse || closed {
			rst(cc)
			continue
		}
		p.wg.Add(1)
		go p.serve(id, cc)
	}
}

func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// pconn is one proxied connection.
type pconn struct {
	id      int
	client  net.Conn
	server  net.Conn
	pending [2]map[*Rule]int64 // per direction: trigger points of rules whose pattern was seen
	offset  [2]int64           // octets forwarded, per direction
	tail    [2][]byte          // the last octets forwarded, per direction
}

func (c *pconn) abort(a Action) {
	if a == Reset {
		rst(c.client)
		rst(c.server)
		return
	}
	c.client.Close()
	c.server.Close()
}

func (p *Proxy) serve(id int, cc net.Conn) {
	defer p.wg.Done()
	sc, err := net.DialTimeout("tcp", p.Target, 10*time.Second)
	if err != nil {
		rst(cc)
		return
	}
	c := &pconn{id: id, client: cc, server: sc, pending: [2]map[*Rule]int64{{}, {}}}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cc.Close()
		sc.Close()
		return
	}
	p.conns[id] = c
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(c, ToServer, sc, cc) }()
	go func() { defer wg.Done(); p.pump(c, ToClient, cc, sc) }()
	wg.Wait()
	cc.Close()
	sc.Close()
	p.mu.Lock()
	delete(p.conns, id)
	if b := p.cmdBuf[id]; len(b) > 0 {
		p.addCmd(id, b)
	}
	delete(p.cmdBuf, id)
	p.mu.Unlock()
}

// pump copies src to dst in direction d, applying the rules.
func (p *Proxy) pump(c *pconn, d Dir, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.forward(c, d, dst, buf[:n]) {
				return
			}
		}
		if err != nil {
			// Pass an orderly close on; anything else ends both sides.
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
					return
				}
			}
			dst.Close()
			return
		}
	}
}

// forward writes data to dst, firing the rules it triggers; false ends the
// pump.
func (p *Proxy) forward(c *pconn, d Dir, dst net.Conn, data []byte) bool {
	for len(data) > 0 {
		if !p.waitStall() {
			return false
		}
		r, cut := p.match(c, d, data)
		chunk := data
		if r != nil {
			chunk = data[:cut]
		}
		if len(chunk) > 0 {
			if _, err := dst.Write(chunk); err != nil {
				return false
			}
			p.account(c, d, chunk)
		}
		data = data[len(chunk):]
		if r == nil {
			continue
		}
		stall := p.fault(r, r.action, c.id, c.offset[d])
		if r.action != Stall {
			return false
		}
		if stall != nil {
			if !p.waitOn(stall) {
				return false
			}
		}
	}
	return true
}

// waitStall blocks while the proxy is stalled; false when the proxy closed.
func (p *Proxy) waitStall() bool {
	p.mu.Lock()
	st, closed := p.stall, p.closed
	p.mu.Unlock()
	if closed {
		return false
	}
	if st == nil {
		return true
	}
	return p.waitOn(st)
}

func (p *Proxy) waitOn(st chan struct{}) bool {
	<-st
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed
}

// match finds the armed rule of direction d that triggers first within
// data (which follows c.offset[d] octets of the stream), and where: data
// up to cut is forwarded before the rule fires. It records the trigger
// points of rules whose pattern it sees.
func (p *Proxy) match(c *pconn, d Dir, data []byte) (*Rule, int) {
	p.mu.Lock()
	rules := make([]*Rule, 0, len(p.rules))
	for _, r := range p.rules {
		if r.dir == d {
			rules = append(rules, r)
		}
	}
	p.mu.Unlock()
	base := c.offset[d]
	tail := c.tail[d]
	var w []byte
	var best *Rule
	bestAt := int64(-1)
	for _, r := range rules {
		at, ok := c.pending[d][r]
		if !ok {
			if len(r.pattern) == 0 {
				at, ok = r.after, true
			} else {
				if w == nil {
					w = append(append(make([]byte, 0, len(tail)+len(data)), tail...), data...)
				}
				// Only a match that ends in data is new: the tail was
				// seen before (perhaps before the rule was armed).
				from := max(0, len(tail)-len(r.pattern)+1)
				if i := bytes.Index(w[from:], r.pattern); i >= 0 {
					end := base - int64(len(tail)) + int64(from+i) + int64(len(r.pattern))
					at, ok = end+r.after, true
				}
			}
			if ok {
				c.pending[d][r] = at
			}
		}
		if !ok || at > base+int64(len(data)) {
			continue
		}
		at = max(at, base)
		if best == nil || at < bestAt {
			best, bestAt = r, at
		}
	}
	if best == nil {
		return nil, len(data)
	}
	// Claim it: a rule fires once, on one connection.
	p.mu.Lock()
	claimed := false
	for i, r := range p.rules {
		if r == best {
			p.rules = append(p.rules[:i:i], p.rules[i+1:]...)
			claimed = true
			break
		}
	}
	p.mu.Unlock()
	delete(c.pending[d], best)
	if !claimed { // another connection fired it first
		return nil, len(data)
	}
	return best, int(bestAt - base)
}

// account counts forwarded octets and collects client command lines.
func (p *Proxy) account(c *pconn, d Dir, chunk []byte) {
	c.offset[d] += int64(len(chunk))
	t := append(c.tail[d], chunk...)
	if len(t) > maxPattern {
		t = t[len(t)-maxPattern:]
	}
	c.tail[d] = append([]byte(nil), t...)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bytes[d] += int64(len(chunk))
	if d != ToServer {
		return
	}
	b := append(p.cmdBuf[c.id], chunk...)
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		p.addCmd(c.id, b[:i])
		b = b[i+1:]
	}
	if len(b) > 4096 {
		b = b[:0] // a literal or garbage: not a command line
	}
	p.cmdBuf[c.id] = append([]byte(nil), b...)
}

// addCmd records one client line; p.mu is held.
func (p *Proxy) addCmd(id int, line []byte) {
	if len(p.cmds) >= p.maxCmds {
		return
	}
	s := strings.TrimRight(string(line), "\r")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	p.cmds = append(p.cmds, fmt.Sprintf("conn%d: %s", id, s))
}
