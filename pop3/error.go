package pop3

// Response codes of RFC 2449 §8 and RFC 3206.
const (
	CodeAuth       = "AUTH"        // RFC 3206 §4: the credentials are wrong
	CodeSysTemp    = "SYS/TEMP"    // RFC 3206 §3: a temporary problem; try later
	CodeSysPerm    = "SYS/PERM"    // RFC 3206 §3: a permanent problem
	CodeInUse      = "IN-USE"      // RFC 2449 §8.1.1: the maildrop is locked
	CodeLoginDelay = "LOGIN-DELAY" // RFC 2449 §8.1.2: logged in too recently
)

// Error is a failure the client is told about: it goes on the wire as
// "-ERR [Code] Text", or "-ERR Text" when Code is empty. Only Code and Text
// are sent; Err is the cause, for logs.
type Error struct {
	Code string
	Text string
	Err  error
}

func (e *Error) Error() string {
	s := e.Text
	if e.Code != "" {
		s = "[" + e.Code + "] " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

var (
	// ErrAuthFailed answers a login with wrong credentials.
	ErrAuthFailed = &Error{Code: CodeAuth, Text: "authentication failed"}
	// ErrInUse answers a login whose maildrop is locked by another session.
	ErrInUse = &Error{Code: CodeInUse, Text: "maildrop is in use by another session"}
)
