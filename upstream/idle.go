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

// parking is what Park started: an IDLE command, or a NOOP loop.
type parking struct {
	idle *imapclient.IdleCommand // nil: the NOOP loop
	stop chan struct{}           // ends the NOOP loop
	done chan struct{}           // closed when the NOOP loop ended
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
// it: IDLE when the server has it (waiting, within the timeout, for the
// server's go-ahead), otherwise a NOOP every keepalive (at least a
// second). Nothing but Resume or Close may be called until Resume.
func (c *Conn) Park(ctx context.Context, keepalive time.Duration) error {
	const op = "idle"
	c.park.mu.Lock()
	defer c.park.mu.Unlock()
	if c.park.p != nil {
		return permError(op, "already parked")
	}
	if c.Caps().Has(imap.CapIdle) {
		var cmd *imapclient.IdleCommand
		err := c.call(ctx, op, phaseCommand, func(*watch) (err error) {
			cmd, err = c.client.Idle()
			return err
		})
		if err != nil {
			return err
		}
		c.park.p = &parking{idle: cmd}
		return nil
	}
	p := &parking{stop: make(chan struct{}), done: make(chan struct{})}
	c.park.p = p
	go c.keepAlive(p, max(keepalive, time.Second))
	return nil
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

// Resume ends what Park started and selects mailbox again: DONE and
// SELECT go out together, one round trip. It returns the SELECT's status.
// On any error the connection must be closed: its state is unknown.
func (c *Conn) Resume(ctx context.Context, mailbox string) (Status, error) {
	c.park.mu.Lock()
	p := c.park.p
	c.park.p = nil
	c.park.mu.Unlock()
	if p == nil {
		return Status{}, permError("select", "not parked")
	}
	if p.idle == nil {
		close(p.stop)
		<-p.done
		return c.Select(ctx, mailbox)
	}
	var idleErr error
	st, err := c.selectWith(ctx, mailbox, func() error {
		// Close writes DONE; IDLE's tagged answer comes before the
		// SELECT's, and Wait collects it once the SELECT is sent.
		if err := p.idle.Close(); err != nil {
			return err
		}
		return nil
	}, func() { idleErr = p.idle.Wait() })
	if err == nil && idleErr != nil {
		err = wrap("idle", idleErr, phaseCommand)
	}
	return st, err
}

// unpark ends what Park started without waiting for the server (Close
// does it before LOGOUT, which IDLE would otherwise hold up).
// A Park in progress is not waited for: the LOGOUT's short deadline ends
// it.
func (c *Conn) unpark() {
	if !c.park.mu.TryLock() {
		return
	}
	p := c.park.p
	c.park.p = nil
	c.park.mu.Unlock()
	switch {
	case p == nil:
	case p.idle != nil:
		p.idle.Close()
	default:
		close(p.stop)
		<-p.done
	}
}
