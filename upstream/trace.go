package upstream

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"sync"
)

// Limits of the tracer: a server line is written in pieces of at most
// traceMaxLine octets; a client line longer than traceMaxClientLine is not
// shown at all (it could hold credentials the tracer failed to recognise).
const (
	traceMaxLine       = 4096
	traceMaxClientLine = 64 << 10
	traceTail          = 32 // what is kept of a client line too long to show
)

const redacted = "[redacted]"

// tracer writes a protocol trace to w: "C: " before each line popbridge
// sends, "S: " before each line it receives. It redacts credentials from
// the client side: everything after LOGIN (including literals), the initial
// response of AUTHENTICATE, and every SASL response line that follows it.
// It is safe for concurrent use by the reading and the writing goroutine.
type tracer struct {
	mu sync.Mutex
	w  io.Writer
	c  traceDir
	s  traceDir
}

func newTracer(w io.Writer) *tracer {
	return &tracer{
		w: w,
		c: traceDir{prefix: "C: ", client: true},
		s: traceDir{prefix: "S: "},
	}
}

// client records octets popbridge sent.
func (t *tracer) client(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.c.feed(t.w, p)
}

// server records octets popbridge received.
func (t *tracer) server(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.feed(t.w, p)
}

// line records one whole line (without its CRLF) sent or received outside
// the IMAP client, during the STARTTLS exchange.
func (t *tracer) line(client bool, s string) {
	if client {
		t.client([]byte(s + "\r\n"))
	} else {
		t.server([]byte(s + "\r\n"))
	}
}

// traceDir is the state of one direction of the trace.
type traceDir struct {
	prefix string
	client bool

	line     []byte // the line being accumulated, without its LF
	toolong  bool   // client: the current line exceeded traceMaxClientLine
	lit      int64  // client: literal octets still to come
	litShown bool   // client: the pending literal is written out
	cont     bool   // client: the next line continues a command after a literal
	secret   bool   // client: the current command holds credentials
	sasl     bool   // client: inside AUTHENTICATE; a line without a space is a SASL response
}

func (d *traceDir) feed(w io.Writer, p []byte) {
	for len(p) > 0 {
		if d.lit > 0 {
			n := int64(len(p))
			if n > d.lit {
				n = d.lit
			}
			if d.litShown {
				d.text(w, p[:n])
			}
			d.lit -= n
			p = p[n:]
			if d.lit == 0 && d.litShown && len(d.line) > 0 {
				d.emit(w, d.line)
				d.line = d.line[:0]
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.add(w, p)
			return
		}
		d.add(w, p[:i])
		p = p[i+1:]
		d.endLine(w)
	}
}

// text writes literal content that is shown: line by line, unparsed.
func (d *traceDir) text(w io.Writer, p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.line = append(d.line, p...)
			if len(d.line) >= traceMaxLine {
				d.emit(w, d.line)
				d.line = d.line[:0]
			}
			return
		}
		d.line = append(d.line, p[:i]...)
		d.emit(w, bytes.TrimSuffix(d.line, []byte("\r")))
		d.line = d.line[:0]
		p = p[i+1:]
	}
}

// add appends part of a protocol line.
func (d *traceDir) add(w io.Writer, p []byte) {
	if !d.client {
		d.line = append(d.line, p...)
		for len(d.line) >= traceMaxLine {
			d.emit(w, d.line[:traceMaxLine])
			d.line = append(d.line[:0], d.line[traceMaxLine:]...)
		}
		return
	}
	if !d.toolong && len(d.line)+len(p) > traceMaxClientLine {
		d.toolong = true
	}
	d.line = append(d.line, p...)
	if d.toolong && len(d.line) > traceTail {
		// Keep only the tail, where a literal announcement would be.
		d.line = append(d.line[:0], d.line[len(d.line)-traceTail:]...)
	}
}

// endLine handles a complete line (its LF was just seen).
func (d *traceDir) endLine(w io.Writer) {
	line := bytes.TrimSuffix(d.line, []byte("\r"))
	defer func() { d.line = d.line[:0] }()
	if !d.client {
		d.emit(w, line)
		return
	}
	n, hasLit := literalSuffix(line)
	if d.toolong {
		// Not shown, and whatever literal follows is not shown either: we
		// cannot tell which command this was.
		d.toolong = false
		d.emit(w, []byte("[line too long, not shown]"))
		d.cont, d.secret = hasLit, hasLit
		d.lit, d.litShown = n, false
		return
	}
	if d.cont {
		// The rest of a command after a literal.
		if d.secret {
			d.emit(w, []byte(redacted))
		} else {
			d.emit(w, line)
		}
	} else {
		d.secret = false
		out := line
		switch {
		case d.sasl && bytes.IndexByte(line, ' ') < 0:
			// A SASL response (base64 or "*"): never shown.
			out = []byte(redacted)
			hasLit = false
		default:
			d.sasl = false
			tag, name, rest := splitCommand(line)
			switch {
			case bytes.EqualFold(name, []byte("LOGIN")):
				d.secret = true
				out = joinRedacted(tag, name, nil)
			case bytes.EqualFold(name, []byte("AUTHENTICATE")):
				d.sasl = true
				mech, ir, _ := bytes.Cut(rest, []byte(" "))
				if len(ir) > 0 {
					d.secret = true
					out = joinRedacted(tag, name, mech)
				}
			}
		}
		d.emit(w, out)
	}
	if hasLit {
		d.cont = true
		d.lit = n
		d.litShown = !d.secret
	} else {
		d.cont = false
		d.secret = false
	}
}

func (d *traceDir) emit(w io.Writer, line []byte) {
	buf := make([]byte, 0, len(d.prefix)+len(line)+1)
	buf = append(buf, d.prefix...)
	buf = append(buf, line...)
	buf = append(buf, '\n')
	_, _ = w.Write(buf)
}

// splitCommand splits "tag NAME rest" into its parts.
func splitCommand(line []byte) (tag, name, rest []byte) {
	tag, after, _ := bytes.Cut(line, []byte(" "))
	name, rest, _ = bytes.Cut(after, []byte(" "))
	if bytes.EqualFold(name, []byte("UID")) {
		var sub []byte
		sub, rest, _ = bytes.Cut(rest, []byte(" "))
		name = append(append(append([]byte{}, name...), ' '), sub...)
	}
	return tag, name, rest
}

func joinRedacted(tag, name, keep []byte) []byte {
	out := append([]byte{}, tag...)
	out = append(out, ' ')
	out = append(out, name...)
	if len(keep) > 0 {
		out = append(out, ' ')
		out = append(out, keep...)
	}
	return append(out, " "+redacted...)
}

// literalSuffix reports whether line ends with a literal announcement
// "{n}" or "{n+}" (also the literal8 form "~{n}"), and n.
func literalSuffix(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	digits := line[i+1 : len(line)-1]
	digits = bytes.TrimSuffix(digits, []byte("+"))
	digits = bytes.TrimSuffix(digits, []byte("-"))
	n, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// traceConn tees a connection's traffic into a tracer.
type traceConn struct {
	net.Conn
	tr *tracer
}

func (c *traceConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.tr.server(p[:n])
	}
	return n, err
}

func (c *traceConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.tr.client(p[:n])
	}
	return n, err
}
