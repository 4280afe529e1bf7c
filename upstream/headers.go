package upstream

import (
	"context"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// maxHeaderFields bounds what is kept of the header fields of one message
// (HeaderFields); the rest is discarded.
const maxHeaderFields = 16 << 10

// HeaderFields sends UID FETCH uids (UID BODY.PEEK[HEADER.FIELDS
// (fields)]), split into commands of at most 8 KB, and calls fn with each
// UID and its header fields as the server sent them (at most 16 KiB), for
// the UIDs that still exist. It changes nothing (PEEK). fn must be quick:
// the connection waits while it runs.
func (c *Conn) HeaderFields(ctx context.Context, uids []uint32, fields []string, fn func(uid uint32, fields []byte)) error {
	const op = "fetch"
	tail := len(" (UID BODY.PEEK[HEADER.FIELDS ()])")
	for _, f := range fields {
		tail += len(f) + 1
	}
	sets := uidChunks(uids, setBudget(tail))
	if len(sets) == 0 {
		return nil
	}
	sec := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: fields, Peek: true}
	opts := &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}}
	return c.call(ctx, op, phaseCommand, func(w *watch) error {
		for _, set := range sets {
			w.touch()
			cmd := c.client.Fetch(set, opts)
			for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
				w.touch()
				var uid uint32
				var body []byte
				got := false
				for item := msg.Next(); item != nil; item = msg.Next() {
					switch it := item.(type) {
					case imapclient.FetchItemDataUID:
						uid = uint32(it.UID)
					case imapclient.FetchItemDataBodySection:
						if it.Literal == nil || got || !it.MatchCommand(sec) {
							continue
						}
						b, err := io.ReadAll(io.LimitReader(it.Literal, maxHeaderFields))
						if err == nil && int64(len(b)) < maxHeaderFields && int64(len(b)) != it.Literal.Size() {
							err = io.ErrUnexpectedEOF
						}
						if err != nil {
							// The literal must not be read again, nor the
							// command (see fetchSection).
							c.abort()
							return tempError(op, "header fields of a message: %v", err)
						}
						body, got = b, true
					}
				}
				if got && uid != 0 {
					fn(uid, body)
				}
			}
			if err := cmd.Close(); err != nil && !isExpungeIssued(err) {
				return err
			}
		}
		return nil
	})
}
