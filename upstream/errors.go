package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

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
var tempCodes = map[imap.ResponseCode]bool{
	imap.ResponseCodeUnavailable: true,
	imap.ResponseCodeLimit:       true,
	imap.ResponseCodeInUse:       true,
	imap.ResponseCodeServerBug:   true,
	imap.ResponseCodeOverQuota:   true,
	imap.ResponseCodeCorruption:  true,
	codeExpungeIssued:            true,
}

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
		switch {
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
	return &Error{Kind: kindOf(err, ph), Op: op, Err: err}
}

func permError(op, format string, args ...any) *Error {
	return &Error{Kind: KindPerm, Op: op, Err: fmt.Errorf(format, args...)}
}

func tempError(op, format string, args ...any) *Error {
	return &Error{Kind: KindTemp, Op: op, Err: fmt.Errorf(format, args...)}
}

// isExpungeIssued reports whether err is a NO [EXPUNGEISSUED]: the message
// was expunged by another session.
func isExpungeIssued(err error) bool {
	var ie *imap.Error
	return errors.As(err, &ie) && ie.Code == codeExpungeIssued
}
