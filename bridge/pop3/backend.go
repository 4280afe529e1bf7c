package pop3

import (
	"context"
	"crypto/tls"
	"io"
	"net"

	"go.uber.org/zap"
)

// Backend authenticates POP3 users and opens their maildrops.
type Backend interface {
	// Login checks the credentials given by USER/PASS (or a SASL PLAIN/LOGIN
	// exchange) and returns the user's maildrop, exclusively locked for this
	// session (RFC 1939 §8). It returns ErrAuthFailed, ErrInUse or another
	// *Error for the client; any other error is logged and answered with
	// "-ERR [SYS/TEMP]". ctx ends when the connection is closed.
	Login(ctx context.Context, ci *ConnInfo, username, password string) (Maildrop, error)
}

// LogFielder is an optional interface of a Backend: the fields it returns
// for a login name (for example the account and the device tag) are added to
// the line logged at the end of each session.
type LogFielder interface {
	LogFields(username string) []zap.Field
}

// ConnInfo describes the client side of a session.
type ConnInfo struct {
	ID         string               // session id, for logs
	RemoteAddr net.Addr             // the client's address (after the PROXY protocol)
	TLS        *tls.ConnectionState // nil on cleartext
}

// Message is one entry of a maildrop listing.
type Message struct {
	Size int64  // octets RETR sends: CRLF line ends, before dot-stuffing
	UIDL string // 1–70 characters in 0x21–0x7E, unique and stable (RFC 1939 §7)
}

// Maildrop is one user's mailbox as seen by one session. Its message list is
// fixed at login: message n is List()[n-1] until the session ends.
// The protocol layer calls its methods from one goroutine, one at a time.
type Maildrop interface {
	// List returns the messages of the maildrop. The caller must not modify it.
	List() []Message
	// Retr writes message n (1-based) to w with CRLF line ends and without
	// dot-stuffing. If it returns an error before writing anything, the client
	// gets "-ERR"; after that, the connection is closed without the
	// terminating dot.
	Retr(ctx context.Context, n int, w io.Writer) error
	// Top writes the header of message n, the blank line after it, and the
	// first lines lines of its body, like Retr.
	Top(ctx context.Context, n, lines int, w io.Writer) error
	// Commit applies the DELE marks: deleted holds the 1-based message
	// numbers, ascending. It is called only for QUIT in the TRANSACTION state;
	// an error is answered with "-ERR" and nothing is assumed deleted.
	Commit(ctx context.Context, deleted []int) error
	// Close releases the maildrop lock and the upstream resources. It is
	// always called once, also after a dropped connection, and never deletes
	// anything.
	Close() error
}
