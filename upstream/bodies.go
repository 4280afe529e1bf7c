package upstream

import (
	"bytes"
	"context"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// FetchBodies sends one UID FETCH uids (UID BODY.PEEK[]) and calls fn with
// each message's UID and body as the server streams them, in the server's
// order. fn must read the body to its end (or fail); a body shorter than
// the server announced is an error. UIDs that no longer exist are left out
// without an error: the caller sees which UIDs fn was called for. It is the
// read-ahead of a POP3 client that retrieves messages one after another:
// one round trip for many messages.
func (c *Conn) FetchBodies(ctx context.Context, uids []uint32, fn func(uid uint32, body io.Reader) error) error {
	const op = "fetch"
	if len(uids) == 0 {
		return nil
	}
	var set imap.UIDSet
	for _, u := range uids {
		set.AddNum(imap.UID(u))
	}
	return c.call(ctx, op, phaseCommand, func(wt *watch) error {
		sec := &imap.FetchItemBodySection{Peek: true}
		cmd := c.client.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}})
		broken := false // a literal failed midway: the command must not be touched again
		err := func() error {
			for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
				wt.touch()
				var uid uint32
				var early []byte // a body that came before the message's UID
				for item := msg.Next(); item != nil; item = msg.Next() {
					switch it := item.(type) {
					case imapclient.FetchItemDataUID:
						uid = uint32(it.UID)
					case imapclient.FetchItemDataBodySection:
						if it.Literal == nil || !it.MatchCommand(sec) {
							continue
						}
						if uid == 0 {
							var b bytes.Buffer
							if _, err := c.copyLiteral(op, &b, it.Literal); err != nil {
								c.abort()
								broken = true
								return err
							}
							early = b.Bytes()
							continue
						}
						// fn may stream to a slow POP3 client: the timeout
						// bounds only the reads from the upstream, as in
						// WriteMessage.
						wt.pause()
						if failed, err := c.feed(op, uid, wt.literal(it.Literal), fn); err != nil {
							broken = failed
							return err
						}
						wt.touch()
					}
				}
				if early != nil && uid != 0 {
					if _, err := c.feed(op, uid, bytesLiteral{bytes.NewReader(early)}, fn); err != nil {
						return err
					}
				}
			}
			return nil
		}()
		// Close drains the rest, which releases imapclient's reader; but after
		// a literal failed midway it would read that literal again while the
		// reader moves on (a data race): the connection is closed, and the
		// reader ends by itself.
		if !broken {
			if cerr := cmd.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil && isExpungeIssued(err) {
			err = nil // some UIDs vanished: fn was not called for them
		}
		return err
	})
}

// feed hands one body to fn and checks that fn read all of it. On an
// error it drops the connection; failed reports that reading the body
// itself failed (then it must not be read again).
func (c *Conn) feed(op string, uid uint32, body imap.LiteralReader, fn func(uint32, io.Reader) error) (failed bool, err error) {
	r := &countingReader{r: body}
	err = fn(uid, r)
	if err == nil && r.n != body.Size() {
		err = tempError(op, "body of UID %d ended after %d of %d octets: %v", uid, r.n, body.Size(), io.ErrUnexpectedEOF)
	}
	if err != nil {
		c.abort()
		if r.err == nil {
			// fn stopped early (the POP3 client went away): read the
			// rest, which ends at once on the closed connection, or
			// imapclient's reader waits for it for ever.
			_, _ = io.Copy(io.Discard, r)
		}
	}
	return r.err != nil, err
}

// countingReader counts what is read through it and keeps the first read
// error other than EOF.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// bytesLiteral is a body already in memory.
type bytesLiteral struct{ *bytes.Reader }

func (b bytesLiteral) Size() int64 { return b.Reader.Size() }
