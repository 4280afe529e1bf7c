package upstream

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Security says how the connection to the upstream is protected.
type Security int

const (
	SecurityTLS      Security = iota // implicit TLS (port 993)
	SecurityStartTLS                 // STARTTLS; never falls back to cleartext
	SecurityNone                     // cleartext: loopback and sidecars only
)

// ParseSecurity parses "tls", "starttls" or "none".
func ParseSecurity(s string) (Security, error) {
	switch s {
	case "tls":
		return SecurityTLS, nil
	case "starttls":
		return SecurityStartTLS, nil
	case "none":
		return SecurityNone, nil
	}
	return 0, fmt.Errorf("unknown security %q (want tls, starttls or none)", s)
}

// UnmarshalText implements encoding.TextUnmarshaler (configuration files).
func (s *Security) UnmarshalText(b []byte) error {
	v, err := ParseSecurity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Security) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s Security) String() string {
	switch s {
	case SecurityTLS:
		return "tls"
	case SecurityStartTLS:
		return "starttls"
	case SecurityNone:
		return "none"
	}
	return fmt.Sprintf("Security(%d)", int(s))
}

// Config says how to reach an upstream IMAP server.
type Config struct {
	Address   string      // host:port
	Security  Security    //
	TLSConfig *tls.Config // ServerName is filled in from Address when empty
	// Timeout bounds dialing, the greeting and every command but the
	// streaming of a message body. 0 means 30 seconds.
	Timeout time.Duration
	Logger  *zap.Logger // nil means no logs
	// Trace, when set, receives a protocol trace: one "C: " line per line
	// sent and one "S: " line per line received. LOGIN arguments and
	// AUTHENTICATE payloads are replaced with "[redacted]". Message bodies
	// are traced as they are; enable it for debugging only.
	Trace io.Writer
	// Observe, when set, is called after every command (and after each
	// Dial, as "dial") with how long it took and its error, for metrics.
	// It must be cheap and safe for concurrent use.
	Observe func(op string, took time.Duration, err error)
}

// Status is what SELECT reports about the selected mailbox.
type Status struct {
	UIDValidity   uint32
	UIDNext       uint32
	NumMessages   uint32
	HighestModSeq uint64 // 0 without CONDSTORE
	// PermanentFlags are the flags the server keeps for good (SELECT's
	// PERMANENTFLAGS); `\*` among them means new keywords may be set.
	// nil when the server sent none: then every flag is permanent
	// (RFC 9051 §7.1).
	PermanentFlags []string
}

// Msg is one message of a listing.
type Msg struct {
	UID          uint32
	Size         int64     // RFC822.SIZE
	InternalDate time.Time // INTERNALDATE
	MessageID    string    // the Message-ID header field's value, trimmed; "" when absent
	EmailID      string    // RFC 8474 EMAILID or Gmail X-GM-MSGID when offered; else ""
}

// Kind classifies an upstream failure for the POP3 client (RFC 3206).
type Kind int

const (
	KindTemp Kind = iota // [SYS/TEMP]: I/O errors, timeouts, BYE, NO [UNAVAILABLE] ...
	KindAuth             // [AUTH]: the server refused the credentials
	KindPerm             // [SYS/PERM]: a missing capability or right, a mailbox that does not exist, over quota ...
	KindGone             // the message is no longer in the mailbox
)

// Error is an upstream failure with its kind. Its text never holds secrets.
type Error struct {
	Kind   Kind
	Reason Reason // why, as far as the server said; ReasonOf fills in a zero one
	Op     string // "login", "select", "fetch", "store", "expunge", "move" ...
	Err    error
}

func (e *Error) Error() string { return "upstream " + e.Op + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// String names the kind for logs and metric labels: "temporary", "auth",
// "permanent" or "gone".
func (k Kind) String() string {
	switch k {
	case KindTemp:
		return "temporary"
	case KindAuth:
		return "auth"
	case KindPerm:
		return "permanent"
	case KindGone:
		return "gone"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// KindOf returns the kind of err: that of the first *Error in its chain, or
// KindTemp.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindTemp
}

// ErrGone is the cause of a KindGone error.
var ErrGone = errors.New("message no longer exists")
