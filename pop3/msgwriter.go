package pop3

import (
	"bufio"
	"bytes"
	"io"
)

// msgWriter is the io.Writer handed to Maildrop.Retr and Maildrop.Top. It
// sends the status line on the first octet, so that a failure before any
// data can still be answered with "-ERR", then the data with the framing
// of RFC 1939 §3: line ends as CRLF (a bare LF becomes CRLF) and a dot
// doubled at the start of a line. close ends the response with CRLF if the
// data lacks it, then ".".
type msgWriter struct {
	c       *conn         // nil outside a session (NewMessageWriter)
	bw      *bufio.Writer // where the framed message goes
	status  string        // sent before the first octet
	started bool          // status sent
	bol     bool          // at the beginning of a line
	cr      bool          // the last octet written was CR
	n       int64         // octets accepted, before stuffing
	out     int64         // octets sent for them, with CRLF line ends, before stuffing
	err     error         // first error writing to the client
}

func (c *conn) newMsgWriter(status string) *msgWriter {
	return &msgWriter{c: c, bw: c.bw, status: status, bol: true}
}

// NewMessageWriter returns a MessageWriter that frames a message onto w
// exactly as RETR sends it (CRLF line ends, dot-stuffing), for callers
// outside a POP3 session such as tools and benchmarks, and end, which
// writes the terminating line (after a CRLF when the data lacks one) and
// flushes.
func NewMessageWriter(w io.Writer) (mw MessageWriter, end func() error) {
	m := &msgWriter{bw: bufio.NewWriter(w), started: true, bol: true}
	return m, func() error {
		m.close()
		return m.bw.Flush()
	}
}

// begin sends the status line before the first octet of the message.
func (w *msgWriter) begin() {
	if !w.started {
		w.started = true
		w.c.reply(w.status)
	}
}

func (w *msgWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	bw := w.bw
	w.begin()
	// Write the longest spans that go out unchanged in one call each, so
	// that a large message reaches the socket in large writes: a span ends
	// after a LF that is followed by a dot (stuffed next), or before a
	// bare LF (which becomes CRLF).
	n := len(p)
	for len(p) > 0 {
		if w.bol && p[0] == '.' {
			bw.WriteByte('.')
		}
		end, bare := len(p), false
		for off := 0; ; {
			i := bytes.IndexByte(p[off:], '\n')
			if i < 0 {
				break
			}
			i += off
			if !(i > 0 && p[i-1] == '\r' || i == 0 && w.cr) {
				end, bare = i, true
				break
			}
			if i+1 < len(p) && p[i+1] == '.' {
				end = i + 1
				break
			}
			off = i + 1
		}
		bw.Write(p[:end])
		w.out += int64(end)
		if bare {
			bw.WriteString("\r\n")
			w.out += 2
			end++
		}
		last := p[end-1]
		w.bol, w.cr = last == '\n', last == '\r'
		p = p[end:]
	}
	w.n += int64(n)
	// A bufio.Writer's error is sticky: an empty write reports any error
	// met while writing p.
	if _, err := bw.Write(nil); err != nil {
		w.err = err
	}
	return n, w.err
}

var _ MessageWriter = (*msgWriter)(nil)

// MessageOctets implements MessageWriter.
func (w *msgWriter) MessageOctets() int64 {
	if w.out == 0 || w.bol {
		return w.out
	}
	return w.out + 2
}

// close ends the response, sending the status line first if no data came.
func (w *msgWriter) close() {
	w.begin()
	if !w.bol {
		w.bw.WriteString("\r\n")
	}
	w.bw.WriteString(".\r\n")
}
