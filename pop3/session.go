package pop3

import (
	"context"
	"strings"
)

// command is one parsed command line.
type command struct {
	name string   // upper case
	args []string // split on runs of spaces; never empty strings
	rest string   // the line after the name and one space, verbatim (PASS)
}

// parseCommand splits a command line. Names are case-insensitive (RFC 1939
// §3).
func parseCommand(line string) command {
	name, rest, _ := strings.Cut(line, " ")
	var cmd command
	cmd.name = strings.ToUpper(name)
	cmd.rest = rest
	for _, a := range strings.Split(rest, " ") {
		if a != "" {
			cmd.args = append(cmd.args, a)
		}
	}
	return cmd
}

// handler runs one command. A non-nil error ends the session.
type handler func(c *conn, cmd command) error

// commands maps each command to the states it is valid in and its handler.
var commands = map[string]struct {
	auth, trans bool
	run         handler
}{
	// RFC 1939 §7 and §5, RFC 2449 §5 and RFC 2595 §4, RFC 5034 §4.
	"CAPA": {true, true, (*conn).cmdCapa},
	"QUIT": {true, true, (*conn).cmdQuit},
	"USER": {true, false, (*conn).cmdUser},
	"PASS": {true, false, (*conn).cmdPass},
	"AUTH": {true, false, (*conn).cmdAuth},
	"STLS": {true, false, (*conn).cmdStls},
	"STAT": {false, true, (*conn).cmdStat},
	"LIST": {false, true, (*conn).cmdList},
	"RETR": {false, true, (*conn).cmdRetr},
	"TOP":  {false, true, (*conn).cmdTop},
	"DELE": {false, true, (*conn).cmdDele},
	"NOOP": {false, true, (*conn).cmdNoop},
	"RSET": {false, true, (*conn).cmdRset},
	"UIDL": {false, true, (*conn).cmdUidl},
}

// execute answers one command line; readErr is errLineTooLong or nil.
func (c *conn) execute(line string, readErr error) error {
	first := c.lines == 1
	var cmd command
	var msg string
	switch {
	case readErr != nil:
		msg = "line too long"
	case strings.IndexByte(line, 0) >= 0:
		msg = "NUL octet in command"
	default:
		cmd = parseCommand(line)
		if _, ok := commands[cmd.name]; !ok || (cmd.name == "STLS" && c.srv.TLSConfig == nil) {
			msg = "unknown command"
		}
	}
	if o := c.srv.Observer; o != nil {
		name := cmd.name
		if msg != "" {
			name = "unknown"
		}
		c.safely("Observer", func() { o.Command(name) })
	}
	if msg != "" {
		c.fail(msg)
		if first {
			// Not a POP3 client: maybe a cross-protocol attack (HTTP
			// sent to this port). Go-imap and mox do the same.
			c.outcome = outcomeClosed
			c.bw.Flush()
			return errEnd
		}
		return nil
	}
	entry := commands[cmd.name]
	if !(c.state == stateAuthorization && entry.auth || c.state == stateTransaction && entry.trans) {
		c.fail("command not valid in this state")
		return nil
	}
	return entry.run(c, cmd)
}

// noArgs answers "-ERR" and returns false if cmd has arguments.
func (c *conn) noArgs(cmd command) bool {
	if len(cmd.args) != 0 {
		c.fail("syntax error: " + cmd.name + " takes no arguments")
		return false
	}
	return true
}

// cmdCapa answers CAPA (RFC 2449 §5) with what may be used in this state.
func (c *conn) cmdCapa(cmd command) error {
	if !c.noArgs(cmd) {
		return nil
	}
	c.reply("+OK capability list follows")
	c.reply("TOP")
	if c.state == stateAuthorization && c.authAllowed() {
		c.reply("USER")
		c.reply("SASL " + strings.Join(c.mechanisms(), " "))
	}
	c.reply("RESP-CODES")
	if c.state == stateAuthorization {
		c.reply("AUTH-RESP-CODE")
	}
	c.reply("PIPELINING")
	c.reply("UIDL")
	if c.state == stateAuthorization && c.stlsOffered() {
		c.reply("STLS")
	}
	if impl := c.srv.Implementation; impl != "" {
		c.reply("IMPLEMENTATION " + impl)
	}
	c.reply(".")
	return nil
}

// cmdQuit answers QUIT. In TRANSACTION it enters the UPDATE state (RFC 1939
// §6): Commit applies the DELE marks, with a context that outlives the
// connection, and +OK is sent only if it succeeds.
func (c *conn) cmdQuit(cmd command) error {
	if !c.noArgs(cmd) {
		return nil
	}
	if c.state == stateAuthorization {
		c.reply("+OK POP3 server signing off")
		c.outcome = outcomeQuit
		c.bw.Flush()
		return errEnd
	}
	c.state = stateUpdate
	deleted := []int{}
	for i, d := range c.deleted {
		if d {
			deleted = append(deleted, i+1)
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), orDefault(c.srv.CommitTimeout, DefaultCommitTimeout))
	err := c.md.Commit(ctx, deleted)
	cancel()
	if err != nil {
		c.outcome = outcomeQuitFailed
		c.replyErr("commit", err)
	} else {
		c.outcome = outcomeQuit
		c.reply("+OK POP3 server signing off")
	}
	c.bw.Flush()
	return errEnd
}

// marked counts the DELE marks.
func (c *conn) marked() int {
	n := 0
	for _, d := range c.deleted {
		if d {
			n++
		}
	}
	return n
}
