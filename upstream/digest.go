package upstream

import (
	"context"
	"crypto/sha256"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// Digests sends UID FETCH uids (UID BODY.PEEK[]), split into commands of at
// most 8 KB, and returns the SHA-256 of each message's body (the octets
// BODY[] holds, line ends untouched) by UID, for the UIDs that still exist.
// Each body is hashed as it streams: no message is held in memory. A
// message the server answers with its body before its UID gets no digest
// (imapclient cannot tell which command such a response answers and drops
// it). Config.Timeout bounds every wait for the upstream. A body that ends
// early is an error, after which the connection is closed.
func (c *Conn) Digests(ctx context.Context, uids []uint32) (map[uint32][32]byte, error) {
	const op = "fetch"
	sets := uidChunks(uids, setBudget(len(" (UID BODY.PEEK[])")))
	if len(sets) == 0 {
		return nil, nil
	}
	if err := c.alive(op); err != nil {
		return nil, err
	}
	sums := make(map[uint32][32]byte, len(uids))
	sec := &imap.FetchItemBodySection{Peek: true}
	opts := &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}}
	w := c.watch(ctx)
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	var err error
	for _, set := range sets {
		w.touch()
		cmd := c.client.Fetch(set, opts)
		broken := false
	msgs:
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			w.touch()
			var uid uint32
			var sum [32]byte
			hashed := false
			for item := msg.Next(); item != nil; item = msg.Next() {
				switch it := item.(type) {
				case imapclient.FetchItemDataUID:
					uid = uint32(it.UID)
				case imapclient.FetchItemDataBodySection:
					if it.Literal == nil || hashed || !it.MatchCommand(sec) {
						continue
					}
					h := sha256.New()
					n, rerr := io.CopyBuffer(h, w.literal(it.Literal), *bufp)
					if rerr == nil && n != it.Literal.Size() {
						rerr = tempError(op, "body of a message ended after %d of %d octets: %v", n, it.Literal.Size(), io.ErrUnexpectedEOF)
					}
					if rerr != nil {
						// The literal must not be read again, so neither
						// may the command: drop the connection (see
						// fetchSection).
						c.abort()
						err, broken = rerr, true
						break msgs
					}
					h.Sum(sum[:0])
					hashed = true
					w.touch()
				}
			}
			if hashed && uid != 0 {
				sums[uid] = sum
			}
		}
		if !broken {
			if cerr := cmd.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			break
		}
	}
	if err != nil && isExpungeIssued(err) {
		err = nil // some UIDs vanished: they have no digest
	}
	if err := w.end(op, err, phaseCommand); err != nil {
		return nil, err
	}
	return sums, nil
}
