package bridge

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/popbridge/popbridge/pop3"
)

// Read-ahead for clients that retrieve a maildrop message after message:
// one UID FETCH asks for the next small messages too, the requested one
// streams to the client at once, and the rest are read into memory while
// the client takes it, so the next RETRs cost no upstream round trip.
// Bounded: a few messages, each small, in a budget per session, and the
// budgets of all sessions in one budget for the process (aheadPool): when
// that is spent, sessions retrieve without reading ahead.
const (
	readAheadMessages   = 32        // messages per UID FETCH
	readAheadMaxMessage = 256 << 10 // larger messages are never read ahead
	readAheadBudget     = 2 << 20   // octets held ahead per session
	readAheadTotal      = 64 << 20  // octets held ahead by all sessions together
	readAheadSpare      = 4         // free buffers kept for reuse
)

// aheadPool hands out the read-ahead buffers, readAheadBudget octets
// each, within one budget for the whole process. A session takes one for
// a batch and gives it back once the batch is used up or dropped, so
// the memory read ahead stays bounded however many sessions there are.
type aheadPool struct {
	mu   sync.Mutex
	max  int      // buffers that may be out at once
	out  int      // buffers out now
	free [][]byte // returned buffers, for reuse
}

func newAheadPool(total int64) *aheadPool {
	return &aheadPool{max: int(total / readAheadBudget)}
}

// get returns a buffer, or nil when the budget is spent.
func (p *aheadPool) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out >= p.max {
		return nil
	}
	p.out++
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return make([]byte, readAheadBudget)
}

// put gives back a buffer from get.
func (p *aheadPool) put(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out--
	if len(p.free) < readAheadSpare {
		p.free = append(p.free, b)
	}
}

// held returns the number of buffers out.
func (p *aheadPool) held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out
}

// readAhead is one batch in flight or done.
type readAhead struct {
	done   chan struct{}     // closed when the UID FETCH is over
	bodies map[uint32][]byte // written by the fetching goroutine until done
}

// settle waits for the read-ahead in flight, if any: every other use of the
// upstream connection must come after it.
func (m *maildrop) settle() {
	if m.ahead != nil {
		<-m.ahead.done
	}
}

// dropAhead ends the read-ahead: it waits for the batch in flight,
// forgets what it read and gives its buffer back to the pool.
func (m *maildrop) dropAhead() {
	m.settle()
	m.ahead = nil
	if m.arena != nil {
		m.d.ahead.put(m.arena)
		m.arena = nil
	}
}

// errNotSent: the batch ended without the requested message.
var errNotSent = errors.New("read-ahead did not deliver the message")

// retrAhead serves RETR n from the read-ahead, or starts a batch with n
// first when the client reads in order. It returns handled=false when the
// ordinary path must serve n; then it has written nothing.
func (m *maildrop) retrAhead(ctx context.Context, n int, w pop3.MessageWriter) (handled bool, err error) {
	uid := m.uids[n-1]
	m.settle()
	if ra := m.ahead; ra != nil {
		if body, ok := ra.bodies[uid]; ok {
			delete(ra.bodies, uid)
			_, err := w.Write(body)
			if len(ra.bodies) == 0 {
				m.dropAhead() // used up: the buffer goes back
			}
			return true, err
		}
		m.dropAhead()
	}
	if m.d.markSeen || (n != 1 && m.lastRetr != n-1) {
		return false, nil
	}
	batch := []uint32{uid}
	sizes := make(map[uint32]int64, readAheadMessages)
	budget := int64(readAheadBudget)
	for i := n; i < len(m.uids) && len(batch) < readAheadMessages; i++ {
		size := m.msgs[i].Size
		if size > readAheadMaxMessage || size > budget {
			break
		}
		budget -= size
		batch = append(batch, m.uids[i])
		sizes[m.uids[i]] = size
	}
	if len(batch) == 1 {
		return false, nil
	}
	if m.arena = m.d.ahead.get(); m.arena == nil {
		return false, nil // the process's budget is spent: no read-ahead
	}
	arena := &arena{buf: m.arena}
	ra := &readAhead{done: make(chan struct{}), bodies: make(map[uint32][]byte, len(batch)-1)}
	first := make(chan error, 1)
	conn := m.conn
	m.ahead = ra
	go func() {
		defer close(ra.done)
		sent := false
		err := conn.FetchBodies(ctx, batch, func(u uint32, body io.Reader) error {
			if u == uid && !sent {
				sent = true
				_, err := io.Copy(w, body)
				first <- err
				return err
			}
			b, err := readSized(body, arena.take(sizes[u]))
			if err != nil {
				return err
			}
			ra.bodies[u] = b
			return nil
		})
		if !sent {
			if err == nil {
				err = errNotSent
			}
			first <- err
		}
	}()
	err = <-first
	if err != nil && !errors.Is(err, errNotSent) && w.MessageOctets() > 0 {
		return true, err
	}
	if err != nil {
		// Nothing reached the client: let the ordinary path (which
		// reconnects, and knows a vanished message) serve it.
		m.dropAhead()
		return false, nil
	}
	return true, nil
}

// arena hands out the read-ahead buffers of one batch from a budget-sized
// buffer of the pool, which batches reuse: a session that retrieves its
// maildrop in order makes no garbage for the messages it reads ahead. A
// batch starts only when the one before is done with.
type arena struct {
	buf []byte
	off int64
}

// take returns a buffer of size octets whose capacity ends there, so that
// appending to it never writes over the next one.
func (a *arena) take(size int64) []byte {
	if a.off+size > int64(len(a.buf)) {
		return make([]byte, size)
	}
	b := a.buf[a.off : a.off+size : a.off+size]
	a.off += size
	return b
}

// readSized reads a body whose size the listing gave into buf, a buffer
// of that size. A body longer than said is read on, up to a limit that
// guards against a server whose RFC822.SIZE lied.
func readSized(body io.Reader, buf []byte) ([]byte, error) {
	n, err := io.ReadFull(body, buf)
	switch err {
	case nil:
		rest, err := io.ReadAll(io.LimitReader(body, 4*readAheadMaxMessage))
		return append(buf, rest...), err
	case io.EOF, io.ErrUnexpectedEOF:
		return buf[:n], nil
	}
	return nil, err
}
