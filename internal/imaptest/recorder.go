package imaptest

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Command is one command a client sent to a MemServer.
type Command struct {
	Name string // upper case, with "UID " when it is a UID command: "UID STORE"
	Args string // what follows the name; literal data is left out
	Line string // the command as sent, tag included, each literal as its "{n}" announcement
	Size int    // octets of the command line(s), CRLFs included, literal data not
}

// Set returns the first argument: the UID set of UID FETCH, UID STORE,
// UID EXPUNGE, UID COPY and UID MOVE.
func (c Command) Set() string {
	set, _, _ := strings.Cut(c.Args, " ")
	return set
}

// recorder collects the commands of the connections of a MemServer.
type recorder struct {
	mu   sync.Mutex
	cmds []Command
}

func (r *recorder) add(c Command) {
	r.mu.Lock()
	r.cmds = append(r.cmds, c)
	r.mu.Unlock()
}

func (r *recorder) all() []Command {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Command(nil), r.cmds...)
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.cmds = nil
	r.mu.Unlock()
}

// recListener wraps accepted connections in recConns.
type recListener struct {
	net.Listener
	s *MemServer
}

func (l *recListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recConn{Conn: c, s: l.s}, nil
}

// recConn parses what the client sends into Commands. It stops at
// STARTTLS (what follows is ciphertext) and ignores the helper
// connections of the MemServer.
type recConn struct {
	net.Conn
	s *MemServer

	line    []byte
	lit     int64
	pending *Command // a command continued after a literal
	stopped bool
}

func (c *recConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.stopped && !c.s.isInternal(c.Conn.RemoteAddr().String()) {
		c.feed(p[:n])
	}
	return n, err
}

func (c *recConn) feed(p []byte) {
	for len(p) > 0 && !c.stopped {
		if c.lit > 0 {
			n := min(int64(len(p)), c.lit)
			c.lit -= n
			p = p[n:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.line = append(c.line, p...)
			return
		}
		c.line = append(c.line, p[:i]...)
		p = p[i+1:]
		c.endLine(string(bytes.TrimSuffix(c.line, []byte("\r"))))
		c.line = c.line[:0]
	}
}

func (c *recConn) endLine(line string) {
	cmd := c.pending
	if cmd == nil {
		tag, rest, ok := strings.Cut(line, " ")
		if !ok || tag == "" {
			return // a SASL response, DONE, or noise
		}
		name, args, _ := strings.Cut(rest, " ")
		name = strings.ToUpper(name)
		if name == "UID" {
			var sub string
			sub, args, _ = strings.Cut(args, " ")
			name += " " + strings.ToUpper(sub)
		}
		cmd = &Command{Name: name, Args: args, Line: line, Size: len(line) + 2}
	} else {
		cmd.Args += line
		cmd.Line += line
		cmd.Size += len(line) + 2
	}
	if n, ok := literalSuffix(line); ok {
		c.lit = n
		c.pending = cmd
		return
	}
	c.pending = nil
	c.s.rec.add(*cmd)
	if cmd.Name == "STARTTLS" {
		c.stopped = true
	}
}

// literalSuffix reports whether line ends with a literal announcement
// ("{n}", "{n+}", "{n-}") and n.
func literalSuffix(line string) (int64, bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	digits := strings.TrimRight(line[i+1:len(line)-1], "+-")
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
