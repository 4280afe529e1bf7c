package pop3

import (
	"math"
	"strconv"

	"go.uber.org/zap"
)

// stat counts the messages not marked deleted and their octets.
func (c *conn) stat() (n int, size int64) {
	for i, m := range c.msgs {
		if !c.deleted[i] {
			n++
			size += m.Size
		}
	}
	return n, size
}

// parseDigits parses one or more decimal digits, without sign, saturating
// at math.MaxInt. ok is false for anything else.
func parseDigits(s string) (n int, ok bool) {
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		d := int(s[i] - '0')
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		if n > (math.MaxInt-d)/10 {
			n = math.MaxInt
		} else if n != math.MaxInt {
			n = n*10 + d
		}
	}
	return n, true
}

// msgArg parses a message number (RFC 1939 §5) and answers "-ERR" unless
// it names a message that exists and is not marked deleted.
func (c *conn) msgArg(s string) (int, bool) {
	n, ok := parseDigits(s)
	switch {
	case !ok:
		c.fail("invalid message number")
	case n < 1 || n > len(c.msgs):
		c.fail("no such message")
	case c.deleted[n-1]:
		c.fail("message " + strconv.Itoa(n) + " already deleted")
	default:
		return n, true
	}
	return 0, false
}

// oneMsgArg parses the single message number of RETR and DELE.
func (c *conn) oneMsgArg(cmd command) (int, bool) {
	if len(cmd.args) != 1 {
		c.fail("syntax error: " + cmd.name + " msg")
		return 0, false
	}
	return c.msgArg(cmd.args[0])
}

// cmdStat answers STAT (RFC 1939 §5) with the messages not marked deleted.
func (c *conn) cmdStat(cmd command) error {
	if c.noArgs(cmd) {
		n, size := c.stat()
		c.replyf("+OK %d %d", n, size)
	}
	return nil
}

// cmdList answers LIST [msg] (RFC 1939 §5) with message sizes.
func (c *conn) cmdList(cmd command) error {
	return c.scanListing(cmd, func(b []byte, n int, m Message) []byte {
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, ' ')
		return strconv.AppendInt(b, m.Size, 10)
	})
}

// cmdUidl answers UIDL [msg] (RFC 1939 §7) with unique-ids.
func (c *conn) cmdUidl(cmd command) error {
	return c.scanListing(cmd, func(b []byte, n int, m Message) []byte {
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, ' ')
		return append(b, m.UIDL...)
	})
}

// scanListing answers LIST and UIDL: with a message number one "+OK"
// line, else a multi-line listing of the messages not marked deleted. line
// appends one entry to b; a listing of 100,000 messages is rendered in one
// scratch buffer, without an allocation per line.
func (c *conn) scanListing(cmd command, line func(b []byte, n int, m Message) []byte) error {
	switch len(cmd.args) {
	case 0:
		if cmd.name == "LIST" {
			n, size := c.stat()
			c.replyf("+OK %d messages (%d octets)", n, size)
		} else {
			c.reply("+OK unique-id listing follows")
		}
		buf := make([]byte, 0, 128)
		for i, m := range c.msgs {
			if !c.deleted[i] {
				buf = append(line(buf[:0], i+1, m), '\r', '\n')
				c.bw.Write(buf)
			}
		}
		c.reply(".")
	case 1:
		if n, ok := c.msgArg(cmd.args[0]); ok {
			c.reply("+OK " + string(line(nil, n, c.msgs[n-1])))
		}
	default:
		c.fail("syntax error: " + cmd.name + " [msg]")
	}
	return nil
}

// cmdRetr answers RETR msg (RFC 1939 §5): "+OK" and the message,
// dot-stuffed, streamed from the Maildrop.
func (c *conn) cmdRetr(cmd command) error {
	n, ok := c.oneMsgArg(cmd)
	if !ok {
		return nil
	}
	w := c.newMsgWriter("+OK " + strconv.FormatInt(c.msgs[n-1].Size, 10) + " octets")
	sent, err := c.endMsg(w, "retr", c.md.Retr(c.ctx, n, w))
	if sent {
		c.nretr++
	}
	return err
}

// cmdTop answers TOP msg n (RFC 1939 §7): "+OK", the header, the blank
// line and the first n lines of the body, dot-stuffed. A number of lines
// too large for an int means the whole body.
func (c *conn) cmdTop(cmd command) error {
	if len(cmd.args) != 2 {
		c.fail("syntax error: TOP msg n")
		return nil
	}
	n, ok := c.msgArg(cmd.args[0])
	if !ok {
		return nil
	}
	lines, ok := parseDigits(cmd.args[1])
	if !ok {
		c.fail("invalid number of lines")
		return nil
	}
	w := c.newMsgWriter("+OK top of message follows")
	sent, err := c.endMsg(w, "top", c.md.Top(c.ctx, n, lines, w))
	if sent {
		c.ntop++
	}
	return err
}

// endMsg finishes the multi-line response of RETR or TOP after the
// Maildrop returned err. If nothing was sent yet, an error is answered
// with "-ERR" and the session goes on. After a partial message the
// connection is closed without the terminating dot, so the client cannot
// take the message as complete (an invariant of bridge/doc.go). sent reports a
// complete response; a non-nil error ends the session.
func (c *conn) endMsg(w *msgWriter, what string, err error) (sent bool, _ error) {
	c.bytesOut += w.n
	switch {
	case w.err != nil:
		return false, w.err // the client went away
	case err != nil && !w.started:
		c.replyErr(what, err)
		return false, nil
	case err != nil:
		c.log.Warn(what+" failed after sending part of the message", zap.Int64("octets", w.n), zap.Error(err))
		c.outcome = outcomeClosed
		c.bw.Flush()
		return false, errEnd
	}
	w.close()
	return true, nil
}

// cmdDele answers DELE msg (RFC 1939 §5): the message is marked, and only
// a QUIT in TRANSACTION hands the marks to Maildrop.Commit.
func (c *conn) cmdDele(cmd command) error {
	if n, ok := c.oneMsgArg(cmd); ok {
		c.deleted[n-1] = true
		c.replyf("+OK message %d deleted", n)
	}
	return nil
}

// cmdNoop answers NOOP (RFC 1939 §5).
func (c *conn) cmdNoop(cmd command) error {
	if c.noArgs(cmd) {
		c.reply("+OK")
	}
	return nil
}

// cmdRset answers RSET (RFC 1939 §5): all DELE marks are removed.
func (c *conn) cmdRset(cmd command) error {
	if c.noArgs(cmd) {
		clear(c.deleted)
		n, size := c.stat()
		c.replyf("+OK maildrop has %d messages (%d octets)", n, size)
	}
	return nil
}
