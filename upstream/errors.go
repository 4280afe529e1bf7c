package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
)

// phase says how a NO without a telling response code is classified.
type phase int

const (
	phaseCommand phase = iota // NO without a code is temporary
	phaseLogin                // NO without a code means the credentials were refused
	phaseSelect               // NO without a code means no such mailbox (Dovecot 2.3 sends no NONEXISTENT)
)

// codeExpungeIssued is RFC 9051's EXPUNGEISSUED, which go-imap has no
// constant for.
const codeExpungeIssued imap.ResponseCode = "EXPUNGEISSUED"

// tempCodes are the response codes of a NO that may go away by itself.
// OVERQUOTA is not among them: a full mailbox stays full until someone
// makes room (see reasonOf).
var tempCodes = map[imap.ResponseCode]bool{
	imap.ResponseCodeUnavailable: true,
	imap.ResponseCodeLimit:       true,
	imap.ResponseCodeInUse:       true,
	imap.ResponseCodeServerBug:   true,
	imap.ResponseCodeCorruption:  true,
	codeExpungeIssued:            true,
}

// Reason says why an upstream command failed, as far as the server's answer
// tells: from the response code of a NO, or, for a NO without one, from its
// text (Cyrus answers a missing right with a bare "NO Permission denied").
type Reason int

const (
	ReasonOther       Reason = iota // a NO that says nothing telling, a BAD, a client-side refusal
	ReasonConnection                // I/O error, timeout, BYE: the server or the path went away
	ReasonPermission                // NO [NOPERM], or a NO whose text says permission denied, ACL, read-only
	ReasonQuota                     // NO [OVERQUOTA], or a NO whose text says over quota
	ReasonUnavailable               // NO [UNAVAILABLE], [INUSE], [LIMIT], [SERVERBUG], [CORRUPTION]: try later
	// ReasonThrottled: the server limits this account for now: NO [THROTTLED],
	// or a NO, BAD or BYE whose text says throttled, too many connections or
	// back off (Gmail, Microsoft 365). Wait before trying again.
	ReasonThrottled
)

func (r Reason) String() string {
	switch r {
	case ReasonOther:
		return "other"
	case ReasonConnection:
		return "connection"
	case ReasonPermission:
		return "permission"
	case ReasonQuota:
		return "quota"
	case ReasonUnavailable:
		return "unavailable"
	case ReasonThrottled:
		return "throttled"
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// ReasonOf returns the Reason of err: that of the first *Error in its
// chain, else what err itself says.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonOther
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return reasonOf(err)
}

// Texts of a NO without a response code that tell why. Matched in lower
// case as substrings.
var (
	permissionTexts = []string{"permission denied", "not permitted", "access denied", "insufficient rights", "acl", "read-only", "read only"}
	quotaTexts      = []string{"over quota", "quota exceeded", "exceeds quota", "quota exceed"}
	throttleTexts   = []string{"throttl", "too many simultaneous", "too many connections", "too many concurrent", "backoff time", "rate limit"}
)

// codeThrottled is the response code Gmail sends when it throttles a user.
const codeThrottled imap.ResponseCode = "THROTTLED"

// throttled reports whether ie says the server is holding the account back.
func throttled(ie *imap.Error) bool {
	if ie.Code == codeThrottled {
		return true
	}
	text := strings.ToLower(ie.Text)
	for _, t := range throttleTexts {
		if strings.Contains(text, t) {
			return true
		}
	}
	return false
}

// BackoffHint returns the wait a throttled server suggested ("Suggested
// Backoff Time: 3000 milliseconds", Microsoft's wording), or 0.
func BackoffHint(err error) time.Duration {
	var ie *imap.Error
	if !errors.As(err, &ie) {
		return 0
	}
	m := backoffRe.FindStringSubmatch(ie.Text)
	if m == nil {
		return 0
	}
	n, perr := strconv.ParseInt(m[1], 10, 64)
	if perr != nil || n < 0 {
		return 0
	}
	unit := time.Millisecond
	if strings.HasPrefix(strings.ToLower(m[2]), "s") {
		unit = time.Second
	}
	return time.Duration(min(n, int64(24*time.Hour/unit))) * unit
}

var backoffRe = regexp.MustCompile(`(?i)backoff time:?\s*(\d+)\s*(milliseconds|ms|seconds|s)`)

// reasonOf classifies err, an error of imapclient, net or crypto/tls.
func reasonOf(err error) Reason {
	var ie *imap.Error
	if !errors.As(err, &ie) {
		return ReasonConnection
	}
	if throttled(ie) {
		return ReasonThrottled
	}
	switch ie.Type {
	case imap.StatusResponseTypeNo:
	case imap.StatusResponseTypeBad:
		return ReasonOther
	default: // BYE
		return ReasonConnection
	}
	switch {
	case ie.Code == imap.ResponseCodeNoPerm:
		return ReasonPermission
	case ie.Code == imap.ResponseCodeOverQuota:
		return ReasonQuota
	case tempCodes[ie.Code] && ie.Code != codeExpungeIssued:
		return ReasonUnavailable
	case ie.Code != "":
		return ReasonOther
	}
	text := strings.ToLower(ie.Text)
	for _, q := range quotaTexts {
		if strings.Contains(text, q) {
			return ReasonQuota
		}
	}
	for _, p := range permissionTexts {
		if containsWord(text, p) {
			return ReasonPermission
		}
	}
	return ReasonOther
}

// containsWord reports whether s holds w with no letter right before or
// after it ("acl" is in "no acl right", not in "oracle").
func containsWord(s, w string) bool {
	for off := 0; ; {
		i := strings.Index(s[off:], w)
		if i < 0 {
			return false
		}
		i += off
		end := i + len(w)
		if (i == 0 || !isLetter(s[i-1])) && (end == len(s) || !isLetter(s[end])) {
			return true
		}
		off = i + 1
	}
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// permCodes are the response codes of a NO that will not go away by itself.
var permCodes = map[imap.ResponseCode]bool{
	imap.ResponseCodeNonExistent:          true,
	imap.ResponseCodeTryCreate:            true,
	imap.ResponseCodeNoPerm:               true,
	imap.ResponseCodeCannot:               true,
	imap.ResponseCodeAlreadyExists:        true,
	imap.ResponseCodeClientBug:            true,
	imap.ResponseCodePrivacyRequired:      true,
	imap.ResponseCodeContactAdmin:         true,
	imap.ResponseCodeAuthenticationFailed: true,
	imap.ResponseCodeAuthorizationFailed:  true,
	imap.ResponseCodeExpired:              true,
	imap.ResponseCodeBadCharset:           true,
	imap.ResponseCodeParse:                true,
	imap.ResponseCodeHasChildren:          true,
	imap.ResponseCodeTooBig:               true,
	imap.ResponseCodeUnknownCTE:           true,
}

// kindOf classifies err, an error of imapclient, net or crypto/tls.
func kindOf(err error, ph phase) Kind {
	var ie *imap.Error
	if errors.As(err, &ie) {
		switch ie.Type {
		case imap.StatusResponseTypeNo:
		case imap.StatusResponseTypeBad:
			// The server did not understand us: retrying sends the same.
			return KindPerm
		default: // BYE (greeting), or anything odd
			return KindTemp
		}
		reason := reasonOf(err)
		switch {
		case reason == ReasonThrottled:
			// Not a wrong password, nor a refusal for good: the server
			// wants the account to wait.
			return KindTemp
		case reason == ReasonQuota:
			// Over quota stays so until someone makes room.
			return KindPerm
		case tempCodes[ie.Code]:
			return KindTemp
		case ph == phaseLogin && ie.Code == imap.ResponseCodePrivacyRequired:
			// The server wants TLS: a configuration problem, not a
			// wrong password.
			return KindPerm
		case ph == phaseLogin:
			return KindAuth
		case permCodes[ie.Code]:
			return KindPerm
		case ph == phaseSelect && ie.Code == "":
			return KindPerm
		case reason == ReasonPermission:
			// A NO without a code that says a right is missing.
			return KindPerm
		}
		return KindTemp
	}
	var (
		certErr    *tls.CertificateVerificationError
		unknownCA  x509.UnknownAuthorityError
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
	)
	if errors.As(err, &certErr) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostErr) || errors.As(err, &invalidErr) {
		return KindPerm
	}
	return KindTemp
}

// wrap turns err into an *Error for op. An *Error in err's chain is
// returned as it is.
func wrap(op string, err error, ph phase) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Kind: kindOf(err, ph), Reason: reasonOf(err), Op: op, Err: err}
}

func permError(op, format string, args ...any) *Error {
	return &Error{Kind: KindPerm, Op: op, Err: fmt.Errorf(format, args...)}
}

// tempError is a temporary failure seen on the client side: a closed or
// broken connection, an answer that makes no sense.
func tempError(op, format string, args ...any) *Error {
	return &Error{Kind: KindTemp, Reason: ReasonConnection, Op: op, Err: fmt.Errorf(format, args...)}
}

// isExpungeIssued reports whether err is a NO [EXPUNGEISSUED]: the message
// was expunged by another session.
func isExpungeIssued(err error) bool {
	var ie *imap.Error
	return errors.As(err, &ie) && ie.Code == codeExpungeIssued
}
