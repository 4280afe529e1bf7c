package upstream

import (
	"context"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// A parked connection is one kept logged in and selected between two
// sessions (the bridge's warm connections). Park keeps it fresh: in IDLE
// (RFC 2177) when the server has it, so that the server may tell it of
// new and expunged messages and flag changes as they happen, or with a
// NOOP every keepalive otherwise. Resume ends that and SELECTs the mailbox
// again, pipelined after IDLE's DONE, so that taking a parked connection
// costs one round trip and gives the exact UIDVALIDITY, UIDNEXT, message
// count and HIGHESTMODSEQ of a fresh SELECT (the status of what this very
// connection will list: never a STATUS, whose answer may run ahead of the
// selected mailbox's view).

// idleDelay is how long a parked connection waits before it enters
// IDLE: a session that comes at once resumes it with SELECT alone, and
// does not wait for IDLE's go-ahead first.
const idleDelay = time.Second

// parking is what Park started: IDLE (after idleDelay) or a NOOP loop.
type parking struct {
	stop chan struct{}           // ends the wait before IDLE, or the NOOP loop
	done chan struct{}           // closed once IDLE runs, or the goroutine ended
	idle *imapclient.IdleCommand // set before done is closed: IDLE runs
}

// parkState guards the Conn's parking.
type parkState struct {
	mu sync.Mutex
	p  *parking
}

// Closed returns a channel closed once the connection is closed: by
// Close, by the server (BYE) or by an error.
func (c *Conn) Closed() <-chan struct{} { return c.client.Closed() }

// Alive reports whether the connection is still open.
func (c *Conn) Alive() bool { return c.alive("") == nil }

// Park starts keeping the selected connection fresh while no session uses
// it, in the background: IDLE a second later when the server has it,
// otherwise a NOOP every keepalive (at least a second). A failure closes
// the connection (Closed tells). Nothing but Resume or Close may be called
// until Resume.
func (c *Conn) Park(keepalive time.Duration) error {
	c.park.mu.Lock()
	defer c.park.mu.Unlock()
	if c.park.p != nil {
		return permError("idle", "already parked")
	}
	p := &parking{stop: make(chan struct{}), done: make(chan struct{})}
	c.park.p = p
	if c.Caps().Has(imap.CapIdle) {
		go c.idleLater(p)
	} else {
		go c.keepAlive(p, max(keepalive, time.Second))
	}
	return nil
}

// idleLater enters IDLE after idleDelay, unless p.stop comes first.
func (c *Conn) idleLater(p *parking) {
	defer close(p.done)
	t := time.NewTimer(idleDelay)
	defer t.Stop()
	select {
	case <-p.stop:
		return
	case <-c.client.Closed():
		return
	case <-t.C:
	}
	select {
	case <-p.stop:
		return
	default:
	}
	var cmd *imapclient.IdleCommand
	err := c.call(context.Background(), "idle", phaseCommand, func(*watch) (err error) {
		cmd, err = c.client.Idle()
		return err
	})
	if err != nil {
		c.log.Debug("upstream IDLE of a parked connection failed; closing it")
		c.abort()
		return
	}
	p.idle = cmd
}

// keepAlive sends a NOOP every interval until p.stop. A failed NOOP closes
// the connection (Closed tells the owner).
func (c *Conn) keepAlive(p *parking, interval time.Duration) {
	defer close(p.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-c.client.Closed():
			return
		case <-t.C:
			if err := c.Noop(context.Background()); err != nil {
				c.log.Debug("upstream NOOP of a parked connection failed; closing it")
				c.abort()
				return
			}
		}
	}
}

// Resume ends what Park started and selects mailbox again: when IDLE
// runs, DONE and SELECT go out together, one round trip. It returns the
// SELECT's status. On any error the connection must be closed: its state
// is unknown.
func (c *Conn) Resume(ctx context.Context, mailbox string) (Status, error) {
	c.park.mu.Lock()
	p := c.park.p
	c.park.p = nil
	c.park.mu.Unlock()
	if p == nil {
		return Status{}, permError("select", "not parked")
	}
	close(p.stop)
	<-p.done
	if p.idle == nil {
		return c.Select(ctx, mailbox)
	}
	var idleErr error
	st, err := c.selectWith(ctx, mailbox, func() error {
		// Close writes DONE; IDLE's tagged answer comes before the
		// SELECT's, and Wait collects it once the SELECT is sent.
		return p.idle.Close()
	}, func() { idleErr = p.idle.Wait() })
	if err == nil && idleErr != nil {
		err = wrap("idle", idleErr, phaseCommand)
	}
	return st, err
}

// unpark ends what Park started without waiting for the server (Close
// does it before LOGOUT, which IDLE would otherwise hold up).
func (c *Conn) unpark() {
	c.park.mu.Lock()
	p := c.park.p
	c.park.p = nil
	c.park.mu.Unlock()
	if p == nil {
		return
	}
	close(p.stop)
	select {
	case <-p.done:
	case <-time.After(logoutTimeout):
		// IDLE's go-ahead does not come: no LOGOUT can follow.
		c.abort()
		return
	}
	if p.idle != nil {
		p.idle.Close()
	}
}
