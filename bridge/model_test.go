package bridge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/internal/popclient"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
)

// The concurrency model (docs/reliability.md, "Concurrency model").
//
// 200 POP3 workers run random sessions (STAT, LIST, UIDL, RETR, TOP, DELE,
// RSET, NOOP, QUIT, and connections dropped at random points) over 20
// upstream accounts and eight device tags each, against two popbridge
// instances per account that share one state store (as instances behind a
// load balancer share PostgreSQL). Each account has a delete policy of its
// own (five accounts per policy). Meanwhile an IMAP client per account
// appends mail and sets flags.
//
// A model of each account records, on one event clock, when every message
// was appended, which device sent QUIT with it DELE'd and when the answer
// came, and the flags the IMAP client set. After every step it is checked:
//
//   - each session's UIDL listing at login, against what the model says
//     must and may be visible to that device (a device never again sees a
//     message it DELE'd and then sent QUIT for; it sees every message that
//     was there before it logged in and nobody removed; each UIDL is the
//     one the message was given at first sight; no UIDL twice; LIST sizes
//     are the octets of the message), and every later STAT, LIST, UIDL,
//     RETR (exact bytes) and TOP in the session;
//   - the upstream after each IMAP step: nothing in INBOX the model does not
//     know, nothing missing that nobody removed, nothing in Trash that was
//     not DELE'd + QUIT under the move policy, nothing in Trash twice (not
//     even when two devices moved it at once), no message flagged \Deleted,
//     \Seen or $POP3Deleted unless the policy says so for a DELE'd + QUIT
//     message, every flag the IMAP client set still there;
//   - one session per (account, device) at a time: from the client side (a
//     login answered +OK while the model has another session of that
//     device open) and from the server side (a wrapper of the store's Lock
//     counts holders; ApplyClient outside the lock is an error);
//   - at the end, with everything quiet: INBOX, Trash and flags exactly as
//     the model says, every device's view exactly as the model says, no
//     intent left pending, and no message lost.

const (
	modelAccounts = 20
	modelWorkers  = 200
	modelSeed     = 20261126
)

// modelDevices are the device tags: 20 accounts x 8 devices = 160 maildrops
// for 200 workers, so that most sessions run side by side and some collide.
var modelDevices = []string{"", "laptop", "phone", "tablet", "desktop", "work", "home", "car"}

var modelPolicies = []string{PolicyMove, PolicyExpunge, PolicyFlag, PolicyHide}

func runtimeStack(buf []byte) int { return runtime.Stack(buf, true) }

// raceEnabled reports whether the test binary was built with -race (the
// counts are scaled down then; the shape stays).
func raceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				return true
			}
		}
	}
	return false
}

// modelScale returns the sessions per worker and the wall-clock budget
// for starting new sessions, per upstream (a Dovecot session costs more).
func modelScale(dovecot bool) (sessions int, budget time.Duration) {
	budget = 20 * time.Second
	switch {
	case testing.Short():
		return 2, 10 * time.Second
	case raceEnabled() && dovecot:
		return 5, budget
	case raceEnabled():
		return 12, budget
	case dovecot:
		return 10, budget
	}
	return 25, budget
}

func TestConcurrencyModel(t *testing.T) {
	t.Run("memserver", func(t *testing.T) { runModel(t, false) })
	t.Run("dovecot", func(t *testing.T) {
		if os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR") == "" || os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN") == "" {
			t.Skip("no Dovecot: set POPBRIDGE_TEST_DOVECOT_ADDR (see .ci/dovecot-start)")
		}
		runModel(t, true)
	})
}

// --- the model ---

type model struct {
	t        *testing.T
	clock    atomic.Int64
	accounts []*mAccount
	spy      *lockSpy
	stop     atomic.Bool

	errMu sync.Mutex
	nerr  int

	stats modelStats
}

type modelStats struct {
	sessions, inUse, loginDrops, quits, quitDrops, drops, retrDrops atomic.Int64
	cmds, deles, retrs, tops, retrBytes                             atomic.Int64
	appends, flags, upstreamChecks, viewChecks                      atomic.Int64
}

func (m *model) tick() int64 { return m.clock.Add(1) }

// fail records a violation from any goroutine; after 30 it stops the run.
func (m *model) fail(format string, args ...any) {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	m.nerr++
	if m.nerr <= 30 {
		m.t.Errorf(format, args...)
	}
	if m.nerr == 30 {
		m.t.Errorf("too many violations: stopping")
		m.stop.Store(true)
	}
}

// mMsg is one message the IMAP client appended.
type mMsg struct {
	id  string
	raw []byte
	uid uint32
	// uidl is what every device must see for it: popbridge's default
	// format, Dovecot's %08Xu%08Xv, fixed at first sight.
	uidl string

	appendStart, appendDone int64
	// quitters are the devices that sent QUIT with the message DELE'd,
	// each with the time; the first of them starts its removal (move,
	// expunge), and quitDone is the first +OK to such a QUIT.
	quitters    map[string]int64
	removeStart int64
	quitDone    int64

	flagsStarted map[string]bool // lower case flags the IMAP client began to set
	flagsDone    map[string]bool // and those it saw done
}

type mAccount struct {
	m       *model
	name    string
	user    string
	pass    string
	policy  string
	addr    string   // the upstream
	upName  string   // its upstream.name: the state keys of different servers differ
	mem     bool     // a MemServer
	servers []string // POP3 addresses of the popbridge instances
	imap    *mIMAP   // the account's IMAP client
	uidv    uint32

	mu         sync.Mutex
	msgs       []*mMsg // by UID
	byUIDL     map[string]*mMsg
	byUID      map[uint32]*mMsg
	byID       map[string]*mMsg
	holder     map[string]int // device → worker with a session open (model side)
	inflight   *mMsg          // an APPEND not yet answered
	unresolved []string       // UIDLs seen while an APPEND was in flight
	nextID     int
}

func (a *mAccount) removes() bool { return a.policy == PolicyMove || a.policy == PolicyExpunge }

// newMessage returns a fresh message: small, or now and then large enough
// to be dropped in the middle of a RETR; some lines start with a dot.
func (a *mAccount) newMessage(rng *rand.Rand, big bool) *mMsg {
	a.mu.Lock()
	a.nextID++
	n := a.nextID
	a.mu.Unlock()
	id := fmt.Sprintf("<%s-%d@model.example.com>", a.name, n)
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender@example.com\r\nTo: %s\r\nSubject: model %s %d\r\nMessage-ID: %s\r\n\r\n", a.name, a.name, n, id)
	lines := 1 + rng.IntN(40)
	if big && rng.IntN(6) == 0 {
		lines = 800 + rng.IntN(400) // 50 KB and more
	}
	for i := range lines {
		if rng.IntN(8) == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "line %d of message %d, with some text to fill it %x\r\n", i, n, rng.Uint64())
	}
	return &mMsg{id: id, raw: b.Bytes(), quitters: map[string]int64{}, flagsStarted: map[string]bool{}, flagsDone: map[string]bool{}}
}

// appendMsg appends msg through the IMAP client and records it.
func (a *mAccount) appendMsg(msg *mMsg) {
	a.mu.Lock()
	msg.appendStart = a.m.tick()
	a.inflight = msg
	a.mu.Unlock()
	uid, err := a.imap.append(msg.raw)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.m.fail("%s: APPEND: %v", a.name, err)
		a.m.stop.Store(true)
		a.inflight = nil
		return
	}
	msg.uid = uid
	msg.uidl = fmt.Sprintf("%08x%08x", uid, a.uidv)
	msg.appendDone = a.m.tick()
	a.inflight = nil
	if a.byUID[uid] != nil {
		a.m.fail("%s: APPEND returned UID %d twice", a.name, uid)
	}
	a.msgs = append(a.msgs, msg)
	a.byUIDL[msg.uidl] = msg
	a.byUID[uid] = msg
	a.byID[msg.id] = msg
	for _, u := range a.unresolved {
		if u != msg.uidl {
			a.m.fail("%s: a device listed UIDL %s, which is no message's (the APPEND in flight got %s)", a.name, u, msg.uidl)
		}
	}
	a.unresolved = nil
	a.m.stats.appends.Add(1)
}

// visibleTo says whether msg may be (may) and must be (must) in a listing
// of device taken between t0 (before PASS) and t1 (after the listing).
// a.mu is held.
func (a *mAccount) visibleTo(msg *mMsg, device string, t0, t1 int64) (may, must bool) {
	if _, deleted := msg.quitters[device]; deleted {
		// This device sent QUIT with it DELE'd: its session ended (the lock
		// let this one in), so the UPDATE is done or pending, and a pending
		// one is finished at this very login. Whatever the policy.
		return false, false
	}
	if msg.appendStart == 0 || msg.appendStart > t1 {
		return false, false
	}
	removed := func(at int64) bool { return a.removes() && msg.removeStart != 0 && msg.removeStart < at }
	gone := a.removes() && msg.quitDone != 0 && msg.quitDone < t0
	may = !gone
	must = msg.appendDone != 0 && msg.appendDone < t0 && !removed(t1)
	return may, must
}

// checkView checks a session's listing at login. It returns the messages
// of the listing (nil for a UIDL still unresolved).
func (a *mAccount) checkView(device string, wid int, t0, t1 int64, view []mEntry) []*mMsg {
	m := a.m
	m.stats.viewChecks.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	who := fmt.Sprintf("%s#%s (worker %d)", a.name, device, wid)
	out := make([]*mMsg, len(view))
	seen := map[string]bool{}
	for i, e := range view {
		if seen[e.uidl] {
			m.fail("%s: UIDL %s listed twice", who, e.uidl)
		}
		seen[e.uidl] = true
		msg := a.byUIDL[e.uidl]
		if msg == nil {
			if a.inflight != nil && a.inflight.appendStart < t1 {
				a.unresolved = append(a.unresolved, e.uidl)
				continue
			}
			m.fail("%s: lists UIDL %s, which is no message's UIDL (changed or invented)", who, e.uidl)
			continue
		}
		out[i] = msg
		if e.size != int64(len(msg.raw)) {
			m.fail("%s: LIST says %d octets for %s, the message has %d", who, e.size, msg.id, len(msg.raw))
		}
		if i > 0 && out[i-1] != nil && out[i-1].uid >= msg.uid {
			m.fail("%s: listing out of UID order", who)
		}
		if may, _ := a.visibleTo(msg, device, t0, t1); !may {
			_, deleted := msg.quitters[device]
			m.fail("%s: sees %s (UIDL %s), which it must not (DELE'd+QUIT by this device: %v; removed by %v at %d, login at %d)",
				who, msg.id, e.uidl, deleted, msg.quitters, msg.quitDone, t0)
		}
	}
	for _, msg := range a.msgs {
		if _, must := a.visibleTo(msg, device, t0, t1); must && !seen[msg.uidl] {
			m.fail("%s: does not see %s (UIDL %s), appended at %d, before its login at %d, and removed by nobody (%v)",
				who, msg.id, msg.uidl, msg.appendDone, t0, msg.quitters)
		}
	}
	return out
}

// quitting records that device is about to send QUIT with dele DELE'd;
// it ends the device's session in the model first.
func (a *mAccount) quitting(device string, wid int, dele []*mMsg) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.release(device, wid)
	now := a.m.tick()
	for _, msg := range dele {
		if msg == nil {
			continue
		}
		if _, ok := msg.quitters[device]; !ok {
			msg.quitters[device] = now
		}
		if msg.removeStart == 0 {
			msg.removeStart = now
		}
	}
}

// quitDone records a +OK to that QUIT.
func (a *mAccount) quitOK(dele []*mMsg) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.m.tick()
	for _, msg := range dele {
		if msg != nil && msg.quitDone == 0 {
			msg.quitDone = now
		}
	}
}

// acquire records a session of device opened by worker wid: none may be
// open already.
func (a *mAccount) acquire(device string, wid int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if other := a.holder[device]; other != 0 {
		a.m.fail("%s#%s: worker %d logged in while worker %d's session was open: two sessions of one (mailbox, device)", a.name, device, wid, other)
	}
	a.holder[device] = wid
}

// release ends it (before QUIT or the drop is sent). a.mu is held.
func (a *mAccount) release(device string, wid int) {
	if a.holder[device] == wid {
		delete(a.holder, device)
	}
}

func (a *mAccount) dropping(device string, wid int) {
	a.mu.Lock()
	a.release(device, wid)
	a.mu.Unlock()
}

// removedSince reports whether msg's removal started (a RETR may then
// find it gone).
func (a *mAccount) removalStarted(msg *mMsg) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.removes() && msg.removeStart != 0
}

// flagLower returns the flags of an upstream message, lower case, without
// \Recent.
func flagLower(m imaptest.Message) []string {
	var f []string
	for _, fl := range m.Flags {
		s := strings.ToLower(string(fl))
		if s != `\recent` {
			f = append(f, s)
		}
	}
	slices.Sort(f)
	return f
}

var policyFlagSet = map[string]bool{`\seen`: true, `$pop3deleted`: true}

// checkUpstream compares INBOX and Trash with the model. With exact, the
// run is over and quiet: the upstream must be exactly what the model says.
// It returns the messages lost.
func (a *mAccount) checkUpstream(exact bool) (lost int) {
	m := a.m
	m.stats.upstreamChecks.Add(1)
	c0 := m.tick()
	inbox, err := a.imap.messages("INBOX", exact)
	var trash []imaptest.Message
	if err == nil {
		trash, err = a.imap.messages("Trash", true)
	}
	if err != nil {
		m.fail("%s: reading the upstream: %v", a.name, err)
		return 0
	}
	c1 := m.tick()
	a.mu.Lock()
	defer a.mu.Unlock()
	if exact {
		c0, c1 = m.tick(), m.tick()
	}
	removedBy := func(msg *mMsg, at int64) bool { return a.removes() && msg.removeStart != 0 && msg.removeStart < at }
	inInbox := map[*mMsg]bool{}
	for _, u := range inbox {
		msg := a.byUID[u.UID]
		if msg == nil {
			m.fail("%s: INBOX holds UID %d, which the IMAP client never appended", a.name, u.UID)
			continue
		}
		if u.Size == 0 && removedBy(msg, c1) && !exact {
			// Expunged by a QUIT while the snapshot was read: Dovecot
			// then sends empty data for it.
			continue
		}
		inInbox[msg] = true
		if exact && !bytes.Equal(u.Raw, msg.raw) || u.Size != int64(len(msg.raw)) {
			m.fail("%s: UID %d changed: %d octets, want %d", a.name, u.UID, u.Size, len(msg.raw))
		}
		if a.removes() && msg.quitDone != 0 && msg.quitDone < c0 {
			m.fail("%s: %s is still in INBOX after a QUIT that DELE'd it was answered +OK (%s policy)", a.name, msg.id, a.policy)
		}
		flagged := msg.removeStart != 0 && msg.removeStart < c1
		for _, f := range flagLower(u) {
			switch {
			case f == `\deleted`:
				if !(a.policy == PolicyExpunge && flagged) || exact {
					m.fail("%s: %s has \\Deleted, but no QUIT DELE'd it under the expunge policy", a.name, msg.id)
				}
			case policyFlagSet[f]:
				if a.policy != PolicyFlag || len(msg.quitters) == 0 {
					m.fail("%s: %s has %s, but no QUIT DELE'd it under the flag policy (%s)", a.name, msg.id, f, a.policy)
				}
			case msg.flagsStarted[f]:
			default:
				m.fail("%s: %s has flag %s, which nobody set", a.name, msg.id, f)
			}
		}
		have := map[string]bool{}
		for _, f := range flagLower(u) {
			have[f] = true
		}
		for f := range msg.flagsDone {
			if !have[f] {
				m.fail("%s: %s lost the flag %s the IMAP client set", a.name, msg.id, f)
			}
		}
		if a.policy == PolicyFlag && msg.quitDone != 0 && msg.quitDone < c0 || exact && a.policy == PolicyFlag && len(msg.quitters) > 0 {
			for f := range policyFlagSet {
				if !have[f] {
					m.fail("%s: %s was DELE'd + QUIT under the flag policy but lacks %s", a.name, msg.id, f)
				}
			}
		}
	}
	inTrash := map[*mMsg]bool{}
	for _, u := range trash {
		id := msgID(u.Raw)
		msg := a.byID[id]
		if msg == nil {
			m.fail("%s: Trash holds %q, which the IMAP client never appended", a.name, id)
			continue
		}
		if inTrash[msg] {
			// Even when two devices' QUITs moved it at the same moment:
			// their UPDATEs run one after the other (the update lock), and
			// the second moves only what is still in INBOX.
			m.fail("%s: %s is in Trash twice (DELE'd + QUIT by %v)", a.name, id, msg.quitters)
		}
		inTrash[msg] = true
		if a.policy != PolicyMove || !removedBy(msg, c1) {
			m.fail("%s: %s is in Trash, but no QUIT DELE'd it under the move policy (%s)", a.name, id, a.policy)
		}
		if !bytes.Equal(u.Raw, msg.raw) {
			m.fail("%s: %s changed its bytes in Trash", a.name, id)
		}
		for _, f := range flagLower(u) {
			if !msg.flagsStarted[f] {
				m.fail("%s: %s has flag %s in Trash, which nobody set", a.name, id, f)
			}
		}
	}
	for _, msg := range a.msgs {
		if msg.appendDone == 0 || msg.appendDone >= c0 {
			continue
		}
		switch {
		case inInbox[msg]:
			if exact && removedBy(msg, c1) {
				m.fail("%s: %s is still in INBOX, though a QUIT DELE'd it (%s policy)", a.name, msg.id, a.policy)
			}
		case a.policy == PolicyMove && inTrash[msg]:
		case a.policy == PolicyExpunge && removedBy(msg, c1):
		case a.policy == PolicyMove && removedBy(msg, c1):
			// A move copies, then expunges; INBOX was read before Trash:
			// in neither snapshot means lost.
			m.fail("%s: %s is in neither INBOX nor Trash", a.name, msg.id)
			lost++
		default:
			m.fail("%s: %s is gone from INBOX, but no QUIT DELE'd it (%s policy; DELE'd+QUIT by %v)", a.name, msg.id, a.policy, msg.quitters)
			lost++
		}
	}
	return lost
}

// --- the lock spy ---

// lockSpy wraps the shared store: it counts the holders of each maildrop
// lock (a count above one is two sessions of one (mailbox, device)) and
// checks that client records change only under their lock.
type lockSpy struct {
	state.Store
	m *model

	mu    sync.Mutex
	held  map[state.ClientKey]int
	total int
	locks atomic.Int64
	busy  atomic.Int64
}

func (s *lockSpy) MailboxVersion(ctx context.Context, mailbox string) (uint64, error) {
	if v, ok := s.Store.(state.Versioner); ok {
		return v.MailboxVersion(ctx, mailbox)
	}
	rec, err := s.Store.LoadMailbox(ctx, mailbox)
	if err != nil {
		return 0, err
	}
	return rec.Version, nil
}

// modelMutation breaks the store on purpose, to show that the model
// notices (docs/reliability.md): POPBRIDGE_MODEL_MUTATE=lock grants every
// maildrop lock, =hide loses the UIDLs a client hid, =uidl stores another
// UIDL for every seventh message. Each must make TestConcurrencyModel fail.
var modelMutation = os.Getenv("POPBRIDGE_MODEL_MUTATE")

func (s *lockSpy) Lock(ctx context.Context, k state.ClientKey) (func(), error) {
	release, err := s.Store.Lock(ctx, k)
	if modelMutation == "lock" && errors.Is(err, state.ErrLocked) {
		release, err = func() {}, nil
	}
	if err != nil {
		if errors.Is(err, state.ErrLocked) {
			s.busy.Add(1)
		}
		return nil, err
	}
	s.locks.Add(1)
	s.mu.Lock()
	s.held[k]++
	s.total++
	n := s.held[k]
	s.mu.Unlock()
	if n > 1 {
		s.m.fail("store: %d sessions hold the maildrop lock of %v at once", n, k)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.held[k]--
			s.total--
			s.mu.Unlock()
			release()
		})
	}, nil
}

func (s *lockSpy) ApplyClient(ctx context.Context, k state.ClientKey, ch state.ClientChange) error {
	s.mu.Lock()
	n := s.held[k]
	s.mu.Unlock()
	if n == 0 {
		s.m.fail("store: the client record %v changed (%+v) while nobody held its lock", k, ch)
	}
	if modelMutation == "hide" {
		ch.Hide = nil
	}
	return s.Store.ApplyClient(ctx, k, ch)
}

func (s *lockSpy) ApplyMailbox(ctx context.Context, mailbox string, base uint64, ch state.MailboxChange) (uint64, error) {
	if modelMutation == "uidl" {
		put := slices.Clone(ch.Put)
		for i := range put {
			if put[i].UID%7 == 0 {
				put[i].UIDL = "x" + put[i].UIDL
			}
		}
		ch.Put = put
	}
	return s.Store.ApplyMailbox(ctx, mailbox, base, ch)
}

func (s *lockSpy) heldTotal() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// --- a POP3 client that reports errors instead of failing the test ---

// mConn is a model worker's POP3 connection: the client of
// internal/popclient, reporting errors instead of failing the test.
type mConn struct {
	*popclient.Conn
	r *bufio.Reader
}

func dialModel(addr string) (*mConn, error) {
	c, greet, err := popclient.Dial(addr, popclient.Options{Timeout: 90 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("greeting %q: %v", greet, err)
	}
	return &mConn{Conn: c, r: c.Reader()}, nil
}

func (c *mConn) send(cmd string) error { c.Send(cmd); return c.Flush() }

func (c *mConn) cmd(cmd string) (string, error) { return c.Cmd(cmd) }

func (c *mConn) multi() ([]byte, error) { return c.Multi() }

// okMulti sends cmd and reads its +OK and multi-line body.
func (c *mConn) okMulti(cmd string) ([]byte, error) {
	l, err := c.cmd(cmd)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(l, "+OK") {
		return nil, fmt.Errorf("%s: %q", cmd, l)
	}
	return c.multi()
}

type mEntry struct {
	n    int
	size int64
	uidl string
}

// pairs parses "n value" lines.
func pairs(body []byte) ([][2]string, error) {
	var out [][2]string
	for _, l := range strings.Split(strings.TrimSuffix(string(body), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 {
			return nil, fmt.Errorf("bad line %q", l)
		}
		out = append(out, [2]string{f[0], f[1]})
	}
	return out, nil
}

// listing returns LIST and UIDL together.
func (c *mConn) listing() ([]mEntry, error) {
	lb, err := c.okMulti("LIST")
	if err != nil {
		return nil, err
	}
	ub, err := c.okMulti("UIDL")
	if err != nil {
		return nil, err
	}
	lp, err := pairs(lb)
	if err != nil {
		return nil, err
	}
	up, err := pairs(ub)
	if err != nil {
		return nil, err
	}
	if len(lp) != len(up) {
		return nil, fmt.Errorf("LIST has %d lines, UIDL %d", len(lp), len(up))
	}
	out := make([]mEntry, len(lp))
	for i := range lp {
		n, _ := strconv.Atoi(lp[i][0])
		size, _ := strconv.ParseInt(lp[i][1], 10, 64)
		if up[i][0] != lp[i][0] {
			return nil, fmt.Errorf("UIDL line %v does not match LIST line %v", up[i], lp[i])
		}
		out[i] = mEntry{n: n, size: size, uidl: up[i][1]}
	}
	return out, nil
}

// --- workers ---

type mWorker struct {
	m   *model
	id  int
	rng *rand.Rand
}

// session runs one random POP3 session on account a as device.
func (w *mWorker) session(a *mAccount) {
	m := w.m
	rng := w.rng
	device := modelDevices[rng.IntN(len(modelDevices))]
	addr := a.servers[rng.IntN(len(a.servers))]
	user := a.user
	if device != "" {
		user += "#" + device
	}
	who := fmt.Sprintf("%s#%s (worker %d)", a.name, device, w.id)
	c, err := dialModel(addr)
	if err != nil {
		m.fail("%s: %v", who, err)
		return
	}
	defer c.Close()
	m.stats.sessions.Add(1)
	if l, err := c.cmd("USER " + user); err != nil || !strings.HasPrefix(l, "+OK") {
		m.fail("%s: USER: %q %v", who, l, err)
		return
	}
	if rng.IntN(40) == 0 {
		// Gone before the answer to PASS: the login runs on and must let
		// go of everything.
		c.send("PASS " + a.pass)
		m.stats.loginDrops.Add(1)
		return
	}
	t0 := m.tick()
	l, err := c.cmd("PASS " + a.pass)
	if err != nil {
		m.fail("%s: PASS: %v", who, err)
		return
	}
	if strings.HasPrefix(l, "-ERR [IN-USE]") {
		m.stats.inUse.Add(1)
		c.cmd("QUIT")
		return
	}
	if !strings.HasPrefix(l, "+OK") {
		m.fail("%s: PASS: %q", who, l)
		return
	}
	a.acquire(device, w.id)
	view, err := c.listing()
	if err != nil {
		m.fail("%s: listing: %v", who, err)
		a.dropping(device, w.id)
		return
	}
	t1 := m.tick()
	msgs := a.checkView(device, w.id, t0, t1, view)
	deleted := make([]bool, len(view))
	ops := 2 + rng.IntN(12)
	for range ops {
		if m.stop.Load() {
			break
		}
		m.stats.cmds.Add(1)
		var live []int
		for i := range view {
			if !deleted[i] {
				live = append(live, i)
			}
		}
		pick := func() int { return live[rng.IntN(len(live))] }
		switch op := rng.IntN(100); {
		case op < 10: // STAT
			n, size := 0, int64(0)
			for _, i := range live {
				n++
				size += view[i].size
			}
			if l, err := c.cmd("STAT"); err != nil || l != fmt.Sprintf("+OK %d %d", n, size) {
				m.fail("%s: STAT = %q %v, want %d messages, %d octets", who, l, err, n, size)
				a.dropping(device, w.id)
				return
			}
		case op < 20: // LIST and UIDL: the session's fixed view minus DELE marks
			got, err := c.listing()
			if err != nil {
				m.fail("%s: %v", who, err)
				a.dropping(device, w.id)
				return
			}
			var want []mEntry
			for _, i := range live {
				want = append(want, view[i])
			}
			if !slices.Equal(got, want) {
				m.fail("%s: listing changed within the session: %v, want %v", who, got, want)
			}
		case op < 45 && len(live) > 0: // RETR
			i := pick()
			if rng.IntN(25) == 0 {
				// Dropped in the middle of the message.
				c.send(fmt.Sprintf("RETR %d", i+1))
				c.NetConn().SetReadDeadline(time.Now().Add(2 * time.Second)) // a short -ERR has fewer octets
				c.r.Peek(1 + rng.IntN(64))
				a.dropping(device, w.id)
				m.stats.retrDrops.Add(1)
				return
			}
			l, err := c.cmd(fmt.Sprintf("RETR %d", i+1))
			if err != nil {
				m.fail("%s: RETR: %v", who, err)
				a.dropping(device, w.id)
				return
			}
			if !strings.HasPrefix(l, "+OK") {
				if msgs[i] == nil || !a.removalStarted(msgs[i]) {
					m.fail("%s: RETR %d = %q, but nobody removed the message", who, i+1, l)
				}
				continue
			}
			body, err := c.multi()
			if err != nil {
				m.fail("%s: RETR %d ended without the dot: %v", who, i+1, err)
				a.dropping(device, w.id)
				return
			}
			m.stats.retrs.Add(1)
			m.stats.retrBytes.Add(int64(len(body)))
			if int64(len(body)) != view[i].size {
				m.fail("%s: RETR %d sent %d octets, LIST said %d", who, i+1, len(body), view[i].size)
			}
			if msgs[i] != nil && !bytes.Equal(body, msgs[i].raw) {
				m.fail("%s: RETR %d (UIDL %s) sent %s, not %s", who, i+1, view[i].uidl, msgID(body), msgs[i].id)
			}
		case op < 52 && len(live) > 0: // TOP n 0: the header
			i := pick()
			body, err := c.okMulti(fmt.Sprintf("TOP %d 0", i+1))
			if err != nil {
				if msgs[i] == nil || !a.removalStarted(msgs[i]) {
					m.fail("%s: TOP %d: %v", who, i+1, err)
				}
				if errors.Is(err, io.EOF) {
					a.dropping(device, w.id)
					return
				}
				continue
			}
			m.stats.tops.Add(1)
			if msgs[i] != nil {
				hdr, _, _ := bytes.Cut(msgs[i].raw, []byte("\r\n\r\n"))
				if !bytes.Equal(body, append(slices.Clip(hdr), "\r\n\r\n"...)) {
					m.fail("%s: TOP %d 0 is not the header of %s", who, i+1, msgs[i].id)
				}
			}
		case op < 80 && len(live) > 0: // DELE
			i := pick()
			if l, err := c.cmd(fmt.Sprintf("DELE %d", i+1)); err != nil || !strings.HasPrefix(l, "+OK") {
				m.fail("%s: DELE %d = %q %v", who, i+1, l, err)
				a.dropping(device, w.id)
				return
			}
			deleted[i] = true
			m.stats.deles.Add(1)
		case op < 86: // RSET
			if l, err := c.cmd("RSET"); err != nil || !strings.HasPrefix(l, "+OK") {
				m.fail("%s: RSET = %q %v", who, l, err)
			}
			clear(deleted)
		default:
			if l, err := c.cmd("NOOP"); err != nil || !strings.HasPrefix(l, "+OK") {
				m.fail("%s: NOOP = %q %v", who, l, err)
			}
		}
	}
	var dele []*mMsg
	unresolvedDele := false
	a.mu.Lock()
	for i, d := range deleted {
		if d {
			if msgs[i] == nil { // its APPEND may have been answered by now
				msgs[i] = a.byUIDL[view[i].uidl]
			}
			dele = append(dele, msgs[i])
			unresolvedDele = unresolvedDele || msgs[i] == nil
		}
	}
	a.mu.Unlock()
	switch end := rng.IntN(100); {
	case end < 20 || unresolvedDele: // dropped: nothing happens
		a.dropping(device, w.id)
		m.stats.drops.Add(1)
	case end < 35: // QUIT, and gone before the answer
		a.quitting(device, w.id, dele)
		c.send("QUIT")
		m.stats.quitDrops.Add(1)
	default:
		a.quitting(device, w.id, dele)
		l, err := c.cmd("QUIT")
		if err != nil || !strings.HasPrefix(l, "+OK") {
			m.fail("%s: QUIT = %q %v", who, l, err)
			return
		}
		a.quitOK(dele)
		m.stats.quits.Add(1)
	}
}

// imapClient appends and flags mail in account a and checks the upstream
// after every step, until stop.
func (m *model) imapClient(a *mAccount, rng *rand.Rand, stop <-chan struct{}) {
	flags := []string{`\Flagged`, "$Label1", "$Label2"}
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(150+rng.IntN(300)) * time.Millisecond):
		}
		if m.stop.Load() {
			return
		}
		if rng.IntN(5) < 2 {
			a.appendMsg(a.newMessage(rng, false))
		} else {
			a.mu.Lock()
			var cand []*mMsg
			for _, msg := range a.msgs {
				if msg.removeStart == 0 {
					cand = append(cand, msg)
				}
			}
			var msg *mMsg
			f := flags[rng.IntN(len(flags))]
			if len(cand) > 0 {
				msg = cand[rng.IntN(len(cand))]
				msg.flagsStarted[strings.ToLower(f)] = true
			}
			a.mu.Unlock()
			if msg != nil {
				if err := a.imap.addFlag(msg.uid, imap.Flag(f)); err != nil {
					m.fail("%s: STORE: %v", a.name, err)
				}
				a.mu.Lock()
				msg.flagsDone[strings.ToLower(f)] = true
				a.mu.Unlock()
				m.stats.flags.Add(1)
			}
		}
		a.checkUpstream(false)
	}
}

// runModel runs the model against 20 MemServers or 20 Dovecot accounts.
func runModel(t *testing.T, dovecot bool) {
	sessions, budget := modelScale(dovecot)
	start := time.Now()
	m := &model{t: t}
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m.spy = &lockSpy{Store: st, m: m, held: map[state.ClientKey]int{}}

	// popbridge instances: two per (upstream address, policy), sharing the
	// store. Each upstream server has a name of its own (the accounts of
	// the memory servers are all "alice").
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	servers := map[string][]string{}
	upNames := map[string]string{}
	upName := func(addr string) string {
		if _, ok := upNames[addr]; !ok {
			upNames[addr] = fmt.Sprintf("up%d", len(upNames))
		}
		return upNames[addr]
	}
	serve := func(addr, policy string) []string {
		key := addr + " " + policy
		if s, ok := servers[key]; ok {
			return s
		}
		for range 2 {
			e := startBridge(t, nil, withStore(m.spy, true), withLogger(log),
				withPOP3Tune(func(p *pop3.Server) { p.LoginFailDelay = 0 }),
				withConfig(func(cfg *Config) {
					cfg.Upstream.Name = upName(addr)
					cfg.Upstream.Address = addr
					cfg.Upstream.Timeout = 60 * time.Second
					cfg.Delete.Policy = Policy(policy)
					cfg.Delete.MoveTo = "Trash"
				}))
			servers[key] = append(servers[key], e.addr)
		}
		return servers[key]
	}

	seedRng := rand.New(rand.NewPCG(modelSeed, 0))
	for i := range modelAccounts {
		a := &mAccount{
			m: m, name: fmt.Sprintf("acct%02d", i), policy: modelPolicies[i%len(modelPolicies)],
			byUIDL: map[string]*mMsg{}, byUID: map[uint32]*mMsg{}, byID: map[string]*mMsg{}, holder: map[string]int{},
		}
		if dovecot {
			a.addr = os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR")
			a.user, a.pass = freshUser(os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")), "pass"
		} else {
			mem := imaptest.NewMemServer(t)
			mem.Create("Trash", imap.MailboxAttrTrash)
			a.addr, a.user, a.pass, a.mem = mem.Addr, mem.User, mem.Pass, true
		}
		var err error
		if a.imap, err = dialIMAP(t, a.addr, a.user, a.pass); err != nil {
			t.Fatal(err)
		}
		if a.uidv, err = a.imap.uidValidity(); err != nil {
			t.Fatal(err)
		}
		a.servers = serve(a.addr, a.policy)
		a.upName = upName(a.addr)
		for range 8 {
			a.appendMsg(a.newMessage(seedRng, true))
		}
		m.accounts = append(m.accounts, a)
	}
	for _, a := range m.accounts {
		crossInstanceLock(t, a)
	}
	setup := time.Since(start)

	// The run.
	stopIMAP := make(chan struct{})
	var imapWG sync.WaitGroup
	for i, a := range m.accounts {
		imapWG.Add(1)
		go func() {
			defer imapWG.Done()
			m.imapClient(a, rand.New(rand.NewPCG(modelSeed, uint64(1000+i))), stopIMAP)
		}()
	}
	deadline := time.Now().Add(budget)
	var wg sync.WaitGroup
	for wid := 1; wid <= modelWorkers; wid++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &mWorker{m: m, id: wid, rng: rand.New(rand.NewPCG(modelSeed, uint64(wid)))}
			for s := 0; s < sessions && !m.stop.Load() && time.Now().Before(deadline); s++ {
				a := m.accounts[w.rng.IntN(len(m.accounts))]
				w.session(a)
			}
		}()
	}
	wg.Wait()
	close(stopIMAP)
	imapWG.Wait()
	run := time.Since(start) - setup

	// Quiet: every session has ended and let go of its lock (a QUIT whose
	// answer nobody read still runs its UPDATE to the end first).
	for end := time.Now().Add(20 * time.Second); m.spy.heldTotal() > 0; {
		if time.Now().After(end) {
			buf := make([]byte, 1<<20)
			t.Logf("goroutines:\n%s", buf[:runtimeStack(buf)])
			t.Fatalf("%d maildrop locks still held 20s after the last session: a session hangs", m.spy.heldTotal())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Exact checks: the upstream, every device's view, no pending intent.
	lost := 0
	for _, a := range m.accounts {
		lost += a.checkUpstream(true)
		for _, device := range modelDevices {
			w := &mWorker{m: m, id: -1, rng: rand.New(rand.NewPCG(modelSeed, 99))}
			w.finalView(a, device)
			key := state.ClientKey{Mailbox: MailboxKey(a.upName, a.user, "INBOX"), Client: device}
			if cl, err := st.LoadClient(context.Background(), key); err != nil || cl.Pending != nil {
				m.fail("%s#%s: an intent is still pending at the end: %+v %v", a.name, device, cl, err)
			}
		}
	}
	if lost != 0 {
		t.Errorf("%d messages lost", lost)
	}
	s := &m.stats
	var msgs, trashed, flagged int
	for _, a := range m.accounts {
		for _, msg := range a.msgs {
			msgs++
			if len(msg.quitters) > 0 {
				trashed++
			}
			if len(msg.flagsDone) > 0 {
				flagged++
			}
		}
	}
	t.Logf("model (%s, seed %d, race=%v): %d workers, %d accounts x %d devices, policies %v; %d POP3 sessions (%d refused [IN-USE], %d logins abandoned, %d QUIT, %d QUIT unanswered, %d dropped, %d dropped mid-RETR); %d commands, %d DELE, %d RETR (%d octets), %d TOP; IMAP: %d APPEND, %d STORE; %d messages (%d DELE'd+QUIT, %d flagged by IMAP); %d view checks, %d upstream checks; locks taken %d, refused %d; violations %d; messages lost %d; setup %v, run %v, total %v",
		map[bool]string{false: "memserver", true: "dovecot"}[dovecot], modelSeed, raceEnabled(), modelWorkers, modelAccounts, len(modelDevices), modelPolicies,
		s.sessions.Load(), s.inUse.Load(), s.loginDrops.Load(), s.quits.Load(), s.quitDrops.Load(), s.drops.Load(), s.retrDrops.Load(),
		s.cmds.Load(), s.deles.Load(), s.retrs.Load(), s.retrBytes.Load(), s.tops.Load(),
		s.appends.Load(), s.flags.Load(), msgs, trashed, flagged, s.viewChecks.Load(), s.upstreamChecks.Load(),
		m.spy.locks.Load(), m.spy.busy.Load(), m.nerr, lost, setup.Round(time.Millisecond), run.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if s.inUse.Load() == 0 {
		t.Errorf("no login was refused [IN-USE]: the run did not test the maildrop lock")
	}
}

// mIMAP is an account's IMAP client in the model: unlike imaptest.Admin it
// returns errors instead of failing the test (it runs in goroutines), and
// copes with a mailbox that changes while it reads it.
type mIMAP struct {
	c *imapclient.Client
}

func dialIMAP(t *testing.T, addr, user, pass string) (*mIMAP, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, pass).Wait(); err != nil {
		return nil, err
	}
	return &mIMAP{c: c}, nil
}

func (c *mIMAP) uidValidity() (uint32, error) {
	st, err := c.c.Status("INBOX", &imap.StatusOptions{UIDValidity: true}).Wait()
	if err != nil {
		return 0, err
	}
	return st.UIDValidity, nil
}

// append APPENDs raw to INBOX and returns its UID (APPENDUID).
func (c *mIMAP) append(raw []byte) (uint32, error) {
	cmd := c.c.Append("INBOX", int64(len(raw)), nil)
	if _, err := cmd.Write(raw); err != nil {
		return 0, err
	}
	if err := cmd.Close(); err != nil {
		return 0, err
	}
	data, err := cmd.Wait()
	if err != nil {
		return 0, err
	}
	if data.UID == 0 {
		return 0, errors.New("no APPENDUID")
	}
	return uint32(data.UID), nil
}

func (c *mIMAP) addFlag(uid uint32, f imap.Flag) error {
	if _, err := c.c.Select("INBOX", nil).Wait(); err != nil {
		return err
	}
	err := c.c.Store(imap.UIDSetNum(imap.UID(uid)), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{f}}, nil).Close()
	if uerr := c.c.Unselect().Wait(); err == nil {
		err = uerr
	}
	return err
}

// messages reads a mailbox: UID, flags, size and, with bodies, the bytes,
// by UID.
func (c *mIMAP) messages(mailbox string, bodies bool) ([]imaptest.Message, error) {
	sd, err := c.c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, err
	}
	var out []imaptest.Message
	if sd.NumMessages > 0 {
		body := &imap.FetchItemBodySection{Peek: true}
		opts := &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true}
		if bodies {
			opts.BodySection = []*imap.FetchItemBodySection{body}
		}
		bufs, ferr := c.c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, opts).Collect()
		for _, b := range bufs {
			out = append(out, imaptest.Message{UID: uint32(b.UID), Flags: b.Flags, Size: b.RFC822Size, Raw: b.FindBodySection(body)})
		}
		var ie *imap.Error
		if ferr != nil && !(errors.As(ferr, &ie) && ie.Type == imap.StatusResponseTypeNo) {
			err = ferr // a NO: some messages were expunged meanwhile
		}
	}
	if uerr := c.c.Unselect().Wait(); err == nil {
		err = uerr
	}
	slices.SortFunc(out, func(a, b imaptest.Message) int { return int(a.UID) - int(b.UID) })
	out = slices.CompactFunc(out, func(a, b imaptest.Message) bool { return a.UID == b.UID })
	return out, err
}

// crossInstanceLock: a session of a device open on one popbridge instance
// makes a login of the same device on the other instance (same store) get
// -ERR [IN-USE], while another device logs in there; once the first session
// quits, the device logs in on the other instance.
func crossInstanceLock(t *testing.T, a *mAccount) {
	t.Helper()
	login := func(addr, device string) (*mConn, string) {
		c, err := dialModel(addr)
		if err != nil {
			t.Fatal(err)
		}
		if l, err := c.cmd("USER " + a.user + "#" + device); err != nil || !strings.HasPrefix(l, "+OK") {
			t.Fatalf("USER: %q %v", l, err)
		}
		l, err := c.cmd("PASS " + a.pass)
		if err != nil {
			t.Fatal(err)
		}
		return c, l
	}
	first, l := login(a.servers[0], "laptop")
	if !strings.HasPrefix(l, "+OK") {
		t.Fatalf("%s: login on instance A: %q", a.name, l)
	}
	second, l := login(a.servers[1], "laptop")
	if !strings.HasPrefix(l, "-ERR [IN-USE]") {
		t.Errorf("%s#laptop: a second session on instance B while A has one: %q, want -ERR [IN-USE]", a.name, l)
	}
	second.Close()
	other, l := login(a.servers[1], "phone")
	if !strings.HasPrefix(l, "+OK") {
		t.Errorf("%s#phone on instance B: %q", a.name, l)
	}
	other.cmd("QUIT")
	other.Close()
	if l, err := first.cmd("QUIT"); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("QUIT: %q %v", l, err)
	}
	first.Close()
	again, l := login(a.servers[1], "laptop")
	if !strings.HasPrefix(l, "+OK") {
		t.Errorf("%s#laptop on instance B after A's QUIT: %q", a.name, l)
	}
	again.cmd("QUIT")
	again.Close()
}

// finalView logs in as device once everything is quiet: the listing must
// be exactly what the model says, and a few RETRs exact.
func (w *mWorker) finalView(a *mAccount, device string) {
	m := w.m
	who := fmt.Sprintf("%s#%s (final)", a.name, device)
	user := a.user
	if device != "" {
		user += "#" + device
	}
	c, err := dialModel(a.servers[0])
	if err != nil {
		m.fail("%s: %v", who, err)
		return
	}
	defer c.Close()
	m.stats.sessions.Add(1)
	if l, err := c.cmd("USER " + user); err != nil || !strings.HasPrefix(l, "+OK") {
		m.fail("%s: USER %q %v", who, l, err)
		return
	}
	if l, err := c.cmd("PASS " + a.pass); err != nil || !strings.HasPrefix(l, "+OK") {
		m.fail("%s: PASS %q %v", who, l, err)
		return
	}
	view, err := c.listing()
	if err != nil {
		m.fail("%s: %v", who, err)
		return
	}
	a.mu.Lock()
	var want []mEntry
	for _, msg := range a.msgs {
		_, deleted := msg.quitters[device]
		if deleted || a.removes() && msg.removeStart != 0 {
			continue
		}
		want = append(want, mEntry{n: len(want) + 1, size: int64(len(msg.raw)), uidl: msg.uidl})
	}
	a.mu.Unlock()
	if !slices.Equal(view, want) {
		m.fail("%s: sees %d messages %v, the model says %d %v", who, len(view), view, len(want), want)
	}
	for range min(3, len(view)) {
		i := w.rng.IntN(len(view))
		body, err := c.okMulti(fmt.Sprintf("RETR %d", i+1))
		a.mu.Lock()
		msg := a.byUIDL[view[i].uidl]
		a.mu.Unlock()
		if err != nil || msg == nil || !bytes.Equal(body, msg.raw) {
			m.fail("%s: RETR %d: %v", who, i+1, err)
		}
	}
	if l, err := c.cmd("QUIT"); err != nil || !strings.HasPrefix(l, "+OK") {
		m.fail("%s: QUIT %q %v", who, l, err)
	}
}
