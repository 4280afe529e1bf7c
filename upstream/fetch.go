package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

const (
	// maxMessageIDHeader bounds what is read of the Message-ID header field
	// section of one message; the rest is discarded.
	maxMessageIDHeader = 16 << 10
	// maxPartial bounds one BODY.PEEK[TEXT]<offset.size> of WriteTop.
	maxPartial = 1 << 20
	// copyBufSize is the buffer of a body copy.
	copyBufSize = 32 << 10
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// messageIDSection is BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)].
var messageIDSection = &imap.FetchItemBodySection{
	Specifier:    imap.PartSpecifierHeader,
	HeaderFields: []string{"MESSAGE-ID"},
	Peek:         true,
}

func fetchOptions(details bool) *imap.FetchOptions {
	opts := &imap.FetchOptions{UID: true, RFC822Size: true}
	if details {
		opts.InternalDate = true
		opts.BodySection = []*imap.FetchItemBodySection{messageIDSection}
		// EMAILID (RFC 8474) and X-GM-MSGID cannot be asked for: imapclient
		// beta.8 has no fetch item for them and fails the whole connection
		// on an unknown one ("unsupported msg-att name"). Msg.EmailID stays
		// empty until it can.
	}
	return opts
}

// List sends UID FETCH from:* (UID RFC822.SIZE), adding INTERNALDATE and
// BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)] when withDetails is set, and calls
// fn for every message with UID >= from, in ascending UID order. The
// response streams: memory does not grow with the mailbox. A message with a
// UID below from (which "n:*" returns when n is above the highest UID) is
// skipped, and so is a repeated response for the same UID; a server that
// goes back in UID order fails the listing (KindTemp) rather than break the
// order. fn must be quick: the connection waits while it runs. An error of
// fn stops the listing: the rest of the response is drained and fn's error
// is returned as it is.
func (c *Conn) List(ctx context.Context, from uint32, withDetails bool, fn func(Msg) error) error {
	if from == 0 {
		from = 1
	}
	set := imap.UIDSet{{Start: imap.UID(from), Stop: 0}} // from:*
	return c.fetchMsgs(ctx, []imap.UIDSet{set}, from, withDetails, fn)
}

// FetchInfo sends UID FETCH uids (UID RFC822.SIZE INTERNALDATE
// BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]), split into commands of at most
// 8 KB, and calls fn, in ascending UID order, for each of those messages
// that still exist. fn and its errors are handled as in List.
func (c *Conn) FetchInfo(ctx context.Context, uids []uint32, fn func(Msg) error) error {
	sets := uidChunks(uids, setBudget(len("UID FETCH  (UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")))
	if len(sets) == 0 {
		return nil
	}
	return c.fetchMsgs(ctx, sets, 1, true, fn)
}

// fnError marks an error returned by the caller's function.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// errIncomplete is a FETCH response without all the items asked for.
type errIncomplete struct{ uid uint32 }

func (e errIncomplete) Error() string {
	return fmt.Sprintf("incomplete FETCH response for UID %d", e.uid)
}

func (c *Conn) fetchMsgs(ctx context.Context, sets []imap.UIDSet, from uint32, details bool, fn func(Msg) error) error {
	const op = "fetch"
	return c.call(ctx, op, phaseCommand, func(w *watch) error {
		opts := fetchOptions(details)
		var last uint32
		var err error
		retries := 0
		progress := uint32(0)     // last, at the latest retry
		var delivered []uint32    // the UIDs fn was called for, ascending
		var gone []uint32         // UIDs skipped by the server, to be found expunged
		sets = slices.Clone(sets) // a set may be narrowed for a retry
		for i := 0; i < len(sets); i++ {
			set := sets[i]
			w.touch()
			cmd := c.client.Fetch(set, opts)
			var again imap.UIDSet // what is left of set, to ask for again
			for msg := cmd.Next(); msg != nil && err == nil; msg = cmd.Next() {
				w.touch()
				if again != nil {
					continue // drained: asked for again below
				}
				m, ok, rerr := readMsg(msg, details)
				var inc errIncomplete
				switch {
				case errors.As(rerr, &inc) && (inc.uid < from || inc.uid <= last && listed(delivered, inc.uid)):
					// A flag update (unsolicited FETCH) of a message
					// listed already, or not asked for: nothing is
					// missing.
				case errors.As(rerr, &inc) && inc.uid > last && retries < maxIncompleteRetries:
					// The answer for this UID was taken by an unsolicited
					// FETCH: ask again for the rest of the set, so that fn
					// still sees every message once, in UID order. Only
					// retries that made no progress count against the
					// bound: on a busy mailbox whose flags change all the
					// time, a long listing may need many.
					if last > progress {
						retries, progress = 0, last
					}
					retries++
					again = uidsAbove(set, last)
				case errors.As(rerr, &inc) && inc.uid < last && set.Contains(imap.UID(inc.uid)):
					// A flag update of a message asked for, after the
					// answers for messages beyond it: the server did not
					// answer for it, most likely because another session
					// expunged it meanwhile. Checked once the listing is
					// done (gone).
					gone = append(gone, inc.uid)
				case errors.As(rerr, &inc):
					err = tempError(op, "incomplete FETCH response for UID %d", inc.uid)
				case rerr != nil:
					// A literal failed midway: it must not be read again
					// (imapclient's reader has moved on), so neither may the
					// command. Drop the connection.
					c.abort()
					return rerr
				case !ok:
					// Without a UID it cannot be an answer to UID FETCH.
				case m.UID < from:
				case m.UID == last:
					// A duplicate FETCH response for the same message.
				case m.UID < last:
					err = tempError(op, "server sent UID %d after UID %d", m.UID, last)
				default:
					last = m.UID
					delivered = append(delivered, m.UID)
					if ferr := fn(m); ferr != nil {
						err = fnError{ferr}
					}
				}
			}
			// Close drains what is left of the response.
			if cerr := cmd.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				break
			}
			if len(again) > 0 {
				// A server holds a session's flag updates until its next
				// command, and delivers them ahead of that command's
				// answers: a NOOP takes those still queued, so that they
				// do not take the place of the answers asked for again
				// (a busy mailbox would otherwise use up the retries).
				w.touch()
				if err := c.client.Noop().Wait(); err != nil {
					return err
				}
				sets[i] = again
				i--
			}
		}
		if err == nil && len(gone) > 0 {
			err = c.checkGone(w, op, gone)
		}
		return err
	})
}

// checkGone makes sure that the messages whose answers a listing lacked
// (uids) are no longer in the mailbox: NOOP (after which a server shows
// this session the expunges of others), then UID SEARCH. One still there
// fails the listing as a temporary error, as its answer was lost: the
// listing must never leave out a message that exists.
func (c *Conn) checkGone(w *watch, op string, uids []uint32) error {
	w.touch()
	if err := c.client.Noop().Wait(); err != nil {
		return err
	}
	w.touch()
	set := imap.UIDSet{}
	for _, u := range uids {
		set.AddNum(imap.UID(u))
	}
	data, err := c.client.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{set}}, nil).Wait()
	if err != nil {
		return err
	}
	for _, u := range data.AllUIDs() {
		if slices.Contains(uids, uint32(u)) {
			return tempError(op, "incomplete FETCH response for UID %d", u)
		}
	}
	return nil
}

// maxIncompleteRetries bounds how often in a row, without a message
// listed in between, one listing asks again after an
// incomplete FETCH response.
const maxIncompleteRetries = 3

// uidsAbove returns the UIDs of set above last (set's ranges are
// ascending; a Stop of 0 is "*").
func uidsAbove(set imap.UIDSet, last uint32) imap.UIDSet {
	out := imap.UIDSet{}
	for _, r := range set {
		start, stop := uint32(r.Start), uint32(r.Stop)
		if stop != 0 && stop <= last {
			continue
		}
		if start <= last {
			start = last + 1
		}
		out = append(out, imap.UIDRange{Start: imap.UID(start), Stop: imap.UID(stop)})
	}
	return out
}

// readMsg reads the items of one FETCH response. ok is false when the
// response carries no UID; err is set only when reading a literal failed.
func readMsg(msg *imapclient.FetchMessageData, details bool) (m Msg, ok bool, err error) {
	var haveUID, haveSize, haveDate bool
	for item := msg.Next(); item != nil; item = msg.Next() {
		switch it := item.(type) {
		case imapclient.FetchItemDataUID:
			m.UID, haveUID = uint32(it.UID), true
		case imapclient.FetchItemDataRFC822Size:
			m.Size, haveSize = it.Size, true
		case imapclient.FetchItemDataInternalDate:
			m.InternalDate, haveDate = it.Time, true
		case imapclient.FetchItemDataBodySection:
			if it.Literal == nil || !it.MatchCommand(messageIDSection) {
				continue
			}
			b, rerr := io.ReadAll(io.LimitReader(it.Literal, maxMessageIDHeader))
			if rerr != nil {
				return m, false, rerr
			}
			if int64(len(b)) < maxMessageIDHeader && int64(len(b)) != it.Literal.Size() {
				return m, false, io.ErrUnexpectedEOF
			}
			m.MessageID = parseMessageID(b)
		}
	}
	if !haveUID || m.UID == 0 {
		return m, false, nil
	}
	if !haveSize || (details && !haveDate) {
		// Most likely an unsolicited FETCH (a flag change by another
		// session) that imapclient took for the answer; the answer itself
		// was then dropped. Report it rather than lose the message.
		return m, false, errIncomplete{m.UID}
	}
	return m, true, nil
}

// parseMessageID returns the unfolded, trimmed value of the first
// Message-ID field in a header section; "" when there is none.
func parseMessageID(h []byte) string { return HeaderValue(h, "Message-ID") }

// HeaderValue returns the unfolded, trimmed value of the first field name
// (matched without regard to case) in a header section with CRLF or LF line
// ends; "" when there is none. The header ends at the first empty line.
func HeaderValue(h []byte, name string) string {
	lines := bytes.Split(h, []byte("\n"))
	for i := 0; i < len(lines); i++ {
		line := bytes.TrimSuffix(lines[i], []byte("\r"))
		if len(line) == 0 {
			return ""
		}
		n, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || !strings.EqualFold(string(bytes.TrimRight(n, " \t")), name) {
			continue
		}
		v := append([]byte{}, value...)
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v = append(v, bytes.TrimSuffix(lines[i], []byte("\r"))...)
		}
		return strings.TrimSpace(string(v))
	}
	return ""
}

// SearchAll sends UID SEARCH ALL (UID SEARCH RETURN (ALL) ALL when the
// server has ESEARCH, whose answer is a compact set) and returns the UIDs of
// every message in the selected mailbox, ascending.
func (c *Conn) SearchAll(ctx context.Context) ([]uint32, error) {
	var opts *imap.SearchOptions
	if c.Caps().Has(imap.CapESearch) {
		opts = &imap.SearchOptions{ReturnAll: true}
	}
	var data *imap.SearchData
	err := c.call(ctx, "search", phaseCommand, func(*watch) (err error) {
		data, err = c.client.UIDSearch(&imap.SearchCriteria{}, opts).Wait()
		return err
	})
	if err != nil {
		return nil, err
	}
	all := data.AllUIDs()
	uids := make([]uint32, len(all))
	for i, u := range all {
		uids[i] = uint32(u)
	}
	slices.Sort(uids)
	return slices.Compact(uids), nil
}

// WriteMessage sends UID FETCH uid (BODY.PEEK[]) and copies the message
// literal to w as it arrives: memory does not depend on the message size.
// It returns the octets written. Line ends are not touched. A UID that no
// longer exists (OK without FETCH data) is KindGone with ErrGone. NIL, a
// literal shorter than announced, or an I/O error (reading upstream or
// writing w) is an error after which the caller must drop what it wrote;
// a body that stopped midway also closes the upstream connection.
// Config.Timeout bounds the wait for the body to start, not its streaming.
func (c *Conn) WriteMessage(ctx context.Context, uid uint32, w io.Writer) (int64, error) {
	const op = "fetch"
	var n int64
	err := c.call(ctx, op, phaseCommand, func(wt *watch) error {
		return c.fetchSection(wt, op, uid, &imap.FetchItemBodySection{Peek: true}, false, func(lit imap.LiteralReader) error {
			var err error
			n, err = c.copyLiteral(op, w, lit)
			return err
		})
	})
	return n, err
}

// WriteTop writes the header of message uid (UID FETCH uid
// (BODY.PEEK[HEADER]), which ends with the blank line) and then the first
// lines lines of its body: UID FETCH uid (BODY.PEEK[TEXT]<0.K>) with
// K = lines*100+1024, continued at the next offset with twice the size until
// lines line ends were seen or the body ended. The body is written up to
// and including the LF (of a CRLF or a bare LF) that ends line lines, or
// whole if it is shorter; lines <= 0 writes the header only. Gone and
// errors are as in WriteMessage.
func (c *Conn) WriteTop(ctx context.Context, uid uint32, lines int, w io.Writer) error {
	const op = "fetch"
	return c.call(ctx, op, phaseCommand, func(wt *watch) error {
		hdr := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
		err := c.fetchSection(wt, op, uid, hdr, false, func(lit imap.LiteralReader) error {
			_, err := c.copyLiteral(op, w, lit)
			return err
		})
		if err != nil || lines <= 0 {
			return err
		}
		tw := &topWriter{w: w, left: lines}
		offset := int64(0)
		size := min(int64(lines)*100+1024, maxPartial)
		for tw.left > 0 {
			wt.touch()
			sec := &imap.FetchItemBodySection{
				Specifier: imap.PartSpecifierText,
				Peek:      true,
				Partial:   &imap.SectionPartial{Offset: offset, Size: size},
			}
			var got int64
			err = c.fetchSection(wt, op, uid, sec, true, func(lit imap.LiteralReader) error {
				var err error
				got, err = c.copyLiteral(op, tw, lit)
				return err
			})
			if err != nil || got < size {
				break // an error, or the end of the body
			}
			offset += got
			size = min(size*2, maxPartial)
		}
		return err
	})
}

// topWriter passes on its input up to and including the LF that ends
// line number left, and swallows the rest.
type topWriter struct {
	w    io.Writer
	left int // line ends still to pass on
}

func (t *topWriter) Write(p []byte) (int, error) {
	q := p
	end := 0
	for t.left > 0 {
		i := bytes.IndexByte(q[end:], '\n')
		if i < 0 {
			end = len(q)
			break
		}
		end += i + 1
		t.left--
	}
	if end > 0 {
		if _, err := t.w.Write(q[:end]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// fetchSection sends UID FETCH uid (UID BODY.PEEK[section]) and calls use
// with the literal of that section. Without FETCH data the message is gone
// (KindGone). A NIL section is an error unless allowNil (then use is not
// called). Once the literal starts, the timeout bounds each read from the
// upstream, not the writes to the client. An error of use drops the connection: after a failed literal,
// imapclient's command must not be touched again.
func (c *Conn) fetchSection(wt *watch, op string, uid uint32, sec *imap.FetchItemBodySection, allowNil bool, use func(imap.LiteralReader) error) error {
	cmd := c.client.Fetch(imap.UIDSetNum(imap.UID(uid)), &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{sec},
	})
	var (
		gotMsg, found bool
		nilErr        error
	)
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		gotMsg = true
		for item := msg.Next(); item != nil; item = msg.Next() {
			bs, ok := item.(imapclient.FetchItemDataBodySection)
			if !ok || found || !bs.MatchCommand(sec) {
				continue
			}
			found = true
			if bs.Literal == nil {
				if !allowNil {
					nilErr = tempError(op, "server returned NIL for the body of UID %d", uid)
				}
				continue
			}
			wt.pause()
			if err := use(wt.literal(bs.Literal)); err != nil {
				c.abort()
				return err
			}
		}
	}
	err := cmd.Close()
	switch {
	case err != nil && isExpungeIssued(err):
		return &Error{Kind: KindGone, Op: op, Err: fmt.Errorf("%w (%v)", ErrGone, err)}
	case err != nil:
		return err
	case nilErr != nil:
		return nilErr
	case !gotMsg:
		return &Error{Kind: KindGone, Op: op, Err: ErrGone}
	case !found:
		return tempError(op, "FETCH response for UID %d without the requested section", uid)
	}
	return nil
}

// copyLiteral copies lit to w and checks that all of it arrived. It
// returns the octets read from lit. When w fails, it drops the connection
// and reads lit to its (then early) end, which releases imapclient's
// reader; when lit fails, lit must not be read again.
func (c *Conn) copyLiteral(op string, w io.Writer, lit imap.LiteralReader) (int64, error) {
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	cw := &countWriter{w: w}
	n, err := io.CopyBuffer(cw, lit, *bufp)
	switch {
	case cw.err != nil:
		c.netConn.Close()
		_, _ = io.CopyBuffer(io.Discard, lit, *bufp)
		return n, &Error{Kind: KindTemp, Op: op, Err: fmt.Errorf("writing to the client: %w", cw.err)}
	case err != nil:
		return n, err
	case n != lit.Size():
		return n, tempError(op, "body ended after %d of %d octets: %v", n, lit.Size(), io.ErrUnexpectedEOF)
	}
	return n, nil
}

// countWriter remembers the error of w. It hides any ReadFrom of w, so
// that io.CopyBuffer uses the pooled buffer.
type countWriter struct {
	w   io.Writer
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

// listed reports whether uid is in delivered, an ascending list.
func listed(delivered []uint32, uid uint32) bool {
	_, ok := slices.BinarySearch(delivered, uid)
	return ok
}
