package pop3

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"time"

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

// MessageWriter is the writer that Maildrop.Retr and Maildrop.Top are
// given. It turns bare LFs into CRLF and ends the message
// with CRLF itself, so a backend need not; MessageOctets returns the size
// of what was written so far as the client receives it before
// dot-stuffing (RFC 1939 §3), counting the final CRLF the server adds
// when the data lacks one: after a whole RETR, the message's exact size.
type MessageWriter interface {
	io.Writer
	MessageOctets() int64
}

// Maildrop is one user's mailbox as seen by one session. Its message list is
// fixed at login: message n is List()[n-1] until the session ends.
// The protocol layer calls its methods from one goroutine, one at a time.
type Maildrop interface {
	// List returns the messages of the maildrop. The caller must not modify it.
	List() []Message
	// Retr writes message n (1-based) to w as the upstream stores it; w
	// repairs line ends and dot-stuffs. If it returns an error before
	// writing anything, the client gets "-ERR"; after that, the connection
	// is closed without the terminating dot.
	Retr(ctx context.Context, n int, w MessageWriter) error
	// Top writes the header of message n, the blank line after it, and the
	// first lines lines of its body, like Retr.
	Top(ctx context.Context, n, lines int, w MessageWriter) error
	// Commit applies the DELE marks: deleted holds the 1-based message
	// numbers, ascending. It is called only for QUIT in the TRANSACTION state;
	// an error is answered with "-ERR" and nothing is assumed deleted.
	Commit(ctx context.Context, deleted []int) error
	// Close releases the maildrop lock and the upstream resources. It is
	// always called once, also after a dropped connection, and never deletes
	// anything.
	Close() error
}

// TokenBackend is an optional interface of a Backend: it accepts OAuth 2.0
// bearer tokens given with AUTH XOAUTH2 and AUTH OAUTHBEARER (RFC 5034,
// RFC 7628). CAPA's SASL line and AUTH list the mechanisms it returns from
// TokenMechanisms.
type TokenBackend interface {
	Backend
	// TokenMechanisms returns the token mechanisms to offer:
	// saslmech.XOAuth2, saslmech.OAuthBearer, both or none; other names are ignored. It is
	// called for every CAPA and AUTH command, so it must be cheap.
	TokenMechanisms() []string
	// LoginToken is Login for a bearer token: mech is the mechanism the
	// client used (saslmech.XOAuth2 or saslmech.OAuthBearer), username the user it
	// named (the OAUTHBEARER authorization identity). The token is a
	// secret like a password. A refused token is answered with
	// ErrAuthFailed or another *Error with Code CodeAuth; the client then
	// gets the mechanism's error challenge before "-ERR".
	LoginToken(ctx context.Context, ci *ConnInfo, mech, username, token string) (Maildrop, error)
}

// ConnLimiter admits new connections (see Server.ConnLimiter).
type ConnLimiter interface {
	// AcquireConn is called once for each new connection, before the
	// greeting and before the TLS handshake of implicit TLS, with the
	// client's address (after the PROXY protocol). A non-nil error
	// refuses the connection: the client gets the *Error as
	// "-ERR [Code] Text", or "-ERR [SYS/TEMP]" for another error, and the
	// connection is closed; the session log line names the error as the
	// reason. Otherwise release is called exactly once, when the
	// connection ends.
	AcquireConn(remote net.Addr) (release func(), err error)
}

// LoginLimiter throttles login attempts (see Server.LoginLimiter): it
// slows down and refuses password guessing.
type LoginLimiter interface {
	// BeginLogin is called before each login attempt (PASS, or the end of
	// an AUTH exchange) with the client's address and the login name as
	// the client gave it. A non-nil error refuses the attempt without
	// asking the Backend: the client gets the *Error as it is (for
	// example [LOGIN-DELAY]), or "-ERR [SYS/TEMP]" for another error, and
	// the refusal is logged once with the error as its reason.
	//
	// Otherwise end must be called exactly once when the attempt is
	// decided, with failed true when the Backend refused the credentials
	// (an *Error with Code CodeAuth) and false for a success or any other
	// failure. end returns how long to wait before the client is answered;
	// the wait applies to failed attempts only.
	BeginLogin(remote net.Addr, username string) (end func(failed bool) time.Duration, err error)
}

// Observer is told what sessions do, for metrics (see Server.Observer). Its
// methods are called from the sessions' goroutines: they must be cheap, safe
// for concurrent use, and must not block.
type Observer interface {
	// SessionStarted is called for every accepted connection, and
	// SessionEnded once when it ends, with what it did.
	SessionStarted()
	SessionEnded(s SessionSummary)
	// Command is called for every command line, with its upper-case name,
	// or "unknown" for a line that is not a POP3 command.
	Command(name string)
	// Login is called after every login attempt with its result: "ok", or
	// the RFC 3206 code of the refusal ("AUTH", "LOGIN-DELAY", "IN-USE",
	// "SYS/TEMP", "SYS/PERM"), "" for a refusal without one.
	Login(result string)
}

// SessionSummary is what one session did, as its log line says.
type SessionSummary struct {
	Outcome  string // quit, quit-failed, dropped, timeout, too-many-errors, shutdown, panic, auth-failed, closed, refused
	TLS      bool
	Retr     int
	Top      int
	Dele     int   // messages marked at the end (deleted at QUIT only when Outcome is quit)
	BytesOut int64 // octets of RETR and TOP responses sent
	Duration time.Duration
}
