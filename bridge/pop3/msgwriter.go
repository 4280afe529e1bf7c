package pop3

import "bytes"

// msgWriter is the io.Writer handed to Maildrop.Retr and Maildrop.Top. It
// sends the status line on the first octet, so that a failure before any
// data can still be answered with "-ERR", then the data with the framing
// of RFC 1939 §3: line ends as CRLF (a bare LF becomes CRLF) and a dot
// doubled at the start of a line. close ends the response with CRLF if the
// data lacks it, then ".".
type msgWriter struct {
	c       *conn
	status  string // sent before the first octet
	started bool   // status sent
	bol     bool   // at the beginning of a line
	cr      bool   // the last octet written was CR
	n       int64  // octets accepted, before stuffing
	err     error  // first error writing to the client
}

func (c *conn) newMsgWriter(status string) *msgWriter {
	return &msgWriter{c: c, status: status, bol: true}
}

func (w *msgWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	bw := w.c.bw
	if !w.started {
		w.started = true
		w.c.reply(w.status)
	}
	n := 0
	for len(p) > 0 {
		if w.bol && p[0] == '.' {
			bw.WriteByte('.')
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			bw.Write(p)
			w.bol, w.cr = false, p[len(p)-1] == '\r'
			n += len(p)
			break
		}
		bw.Write(p[:i])
		if !(i > 0 && p[i-1] == '\r' || i == 0 && w.cr) {
			bw.WriteByte('\r')
		}
		bw.WriteByte('\n')
		w.bol, w.cr = true, false
		n += i + 1
		p = p[i+1:]
	}
	w.n += int64(n)
	// A bufio.Writer's error is sticky: an empty write reports any error
	// met while writing p.
	if _, err := bw.Write(nil); err != nil {
		w.err = err
	}
	return n, w.err
}

// close ends the response, sending the status line first if no data came.
func (w *msgWriter) close() {
	if !w.started {
		w.started = true
		w.c.reply(w.status)
	}
	if !w.bol {
		w.c.bw.WriteString("\r\n")
	}
	w.c.bw.WriteString(".\r\n")
}
