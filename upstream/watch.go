package upstream

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
)

// watch ends a blocked call: it closes the client when ctx ends or when the
// Conn's timeout passes without a touch.
type watch struct {
	c       *Conn
	stopCtx func() bool
	timer   *time.Timer

	mu       sync.Mutex
	finished bool
	cause    error
}

func (c *Conn) watch(ctx context.Context) *watch {
	w := &watch{c: c}
	w.stopCtx = context.AfterFunc(ctx, func() { w.fire(ctx.Err()) })
	w.timer = time.AfterFunc(c.timeout, func() {
		w.fire(fmt.Errorf("no answer within %v: %w", c.timeout, context.DeadlineExceeded))
	})
	return w
}

func (w *watch) fire(cause error) {
	w.mu.Lock()
	if w.finished || w.cause != nil {
		w.mu.Unlock()
		return
	}
	w.cause = cause
	w.mu.Unlock()
	w.c.client.Close()
}

// touch restarts the timeout: the call made progress.
func (w *watch) touch() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.finished && w.cause == nil {
		w.timer.Reset(w.c.timeout)
	}
}

// pause stops the timeout; only ctx ends the call from now on (used while a
// message body streams to a client that may be slow).
func (w *watch) pause() { w.timer.Stop() }

// literal returns lit with the timeout running only while a Read waits for
// the upstream: a server that stalls in the middle of a body is cut off
// after the timeout, while the time spent writing to a slow POP3 client
// (bounded by the POP3 side's write timeout) does not count.
func (w *watch) literal(lit imap.LiteralReader) imap.LiteralReader {
	return watchedLiteral{LiteralReader: lit, w: w}
}

type watchedLiteral struct {
	imap.LiteralReader
	w *watch
}

func (r watchedLiteral) Read(p []byte) (int, error) {
	r.w.touch()
	n, err := r.LiteralReader.Read(p)
	r.w.pause()
	return n, err
}

// done stops watching and returns why the client was closed, if it was.
func (w *watch) done() error {
	w.stopCtx()
	w.timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finished = true
	return w.cause
}

// end stops w and returns err as an *Error for op: the watch's cause if it
// fired, else err classified for ph.
func (w *watch) end(op string, err error, ph phase) error {
	if cause := w.done(); cause != nil && err != nil {
		return &Error{Kind: KindTemp, Reason: ReasonConnection, Op: op, Err: cause}
	}
	return wrap(op, err, ph)
}

// abort drops the connection at once, without waiting for imapclient's
// reader (which may wait for a literal to be consumed).
func (c *Conn) abort() {
	c.netConn.Close()
	go c.client.Close()
}

// alive fails fast on a connection that is already closed.
func (c *Conn) alive(op string) error {
	select {
	case <-c.client.Closed():
		return tempError(op, "connection closed")
	default:
		return nil
	}
}

// call runs f as the upstream operation op: it fails at once on a
// connection that is already closed, watches ctx and the timeout while f
// runs, and returns f's error classified for ph (or why the watch closed
// the connection). An error f wraps in fnError is the caller's own and is
// returned as it is.
func (c *Conn) call(ctx context.Context, op string, ph phase, f func(w *watch) error) error {
	if err := c.alive(op); err != nil {
		return err
	}
	start := time.Now()
	w := c.watch(ctx)
	err := f(w)
	if fe, ok := err.(fnError); ok {
		w.done()
		c.observe(op, start, nil)
		return fe.err
	}
	err = w.end(op, err, ph)
	c.observe(op, start, err)
	return err
}

// observe reports one operation to Config.Observe.
func (c *Conn) observe(op string, start time.Time, err error) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(op, time.Since(start), err)
	}
}
