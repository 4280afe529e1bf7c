package bridge

import (
	"bytes"
	"io"

	"github.com/popbridge/popbridge/pop3"
)

// sizedWriter is where Retr and Top write a message: it passes on the
// message with CRLF line ends, ending in CRLF after finish, and counts the
// octets the client receives for it before dot-stuffing.
type sizedWriter interface {
	io.Writer
	octets() int64
	finish() error
}

// sized returns the sizedWriter for w: the POP3 server's own writer, which
// repairs line ends in the same pass as its dot-stuffing, or else a
// crlfWriter around w.
func sized(w io.Writer) sizedWriter {
	if mw, ok := w.(pop3.MessageWriter); ok {
		return popWriter{mw}
	}
	return &crlfWriter{w: w}
}

// popWriter is the POP3 server's writer; it ends the message itself.
type popWriter struct{ pop3.MessageWriter }

func (p popWriter) octets() int64 { return p.MessageOctets() }
func (p popWriter) finish() error { return nil }

// crlfWriter passes a message through, turning every LF that is not
// preceded by CR into CRLF, and counts the octets it writes. finish adds the
// final CRLF when the message does not end with one. What it writes is
// exactly what a POP3 client receives before dot-stuffing (RFC 1939 §3), so
// its count is the message's true size.
type crlfWriter struct {
	w    io.Writer
	n    int64
	last byte // the last byte written, 0 before the first
}

var crlf = []byte("\r\n")

func (c *crlfWriter) Write(p []byte) (int, error) {
	done := 0
	for off := 0; ; {
		i := bytes.IndexByte(p[off:], '\n')
		if i < 0 {
			break
		}
		i += off
		off = i + 1
		prev := c.last
		if i > 0 {
			prev = p[i-1]
		}
		if prev == '\r' {
			continue
		}
		// Write up to the LF, then CRLF in its place.
		if err := c.write(p[done:i]); err != nil {
			return done, err
		}
		if err := c.write(crlf); err != nil {
			return done, err
		}
		done = i + 1
	}
	if err := c.write(p[done:]); err != nil {
		return done, err
	}
	return len(p), nil
}

func (c *crlfWriter) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	if n > 0 {
		c.last = p[n-1]
	}
	return err
}

func (c *crlfWriter) octets() int64 { return c.n }

// finish ends a non-empty message with CRLF.
func (c *crlfWriter) finish() error {
	if c.n == 0 || c.last == '\n' {
		return nil
	}
	return c.write(crlf)
}
