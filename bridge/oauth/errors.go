package oauth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"golang.org/x/oauth2"
)

// The kinds of failure; an *Error matches one of them with errors.Is.
var (
	// ErrReconsent: the grant is gone (revoked, expired, password
	// changed, consent withdrawn, refresh token rotated away, or none
	// was ever issued). Only a new enrollment helps; the POP3 client gets
	// -ERR [AUTH] and the account is marked.
	ErrReconsent = errors.New("the authorization is no longer valid: the account must be enrolled again")
	// ErrInvalidClient: the provider refused the client (client ID,
	// secret, redirect URI, allowed flows or scopes). The operator must
	// fix the app registration or the configuration.
	ErrInvalidClient = errors.New("the provider refused the OAuth client configuration")
	// ErrAccessDenied: the user declined.
	ErrAccessDenied = errors.New("the user declined the authorization request")
	// ErrExpired: the device code (or the wait for the user) expired
	// before the user approved.
	ErrExpired = errors.New("the sign-in code expired before it was approved: start again")
	// ErrAuthorizationPending: the user has not approved yet. The device
	// flow keeps polling on it; it surfaces only if a provider sends it
	// elsewhere.
	ErrAuthorizationPending = errors.New("the user has not approved the sign-in yet")
	// ErrStateMismatch: a pasted redirect does not belong to this
	// authorization request.
	ErrStateMismatch = errors.New("the redirect does not belong to this sign-in (state mismatch): paste the address from this sign-in's browser window")
	// ErrTemporary: the provider could not be reached or failed (network,
	// HTTP 5xx or 429, temporarily_unavailable); a later retry may
	// succeed.
	ErrTemporary = errors.New("the OAuth provider is temporarily unavailable")
)

// Error is a failed OAuth request. Its text holds the provider's error
// code and description, never a token or secret.
type Error struct {
	Op          string // "refresh", "device authorization", "device token", "exchange", "client credentials", "authorize"
	Code        string // RFC 6749 §5.2 error code; "" for transport errors
	Description string // the provider's error_description
	HTTPStatus  int    // 0 when no response
	kind        error  // one of the Err* variables, or nil
	Err         error  // the cause
}

func (e *Error) Error() string {
	msg := "oauth " + e.Op + ": "
	if e.kind != nil {
		msg += e.kind.Error()
	} else {
		msg += "failed"
	}
	switch {
	case e.Code != "" && e.Description != "":
		msg += fmt.Sprintf(" (%s: %.300s)", e.Code, e.Description)
	case e.Code != "":
		msg += " (" + e.Code + ")"
	case e.HTTPStatus != 0:
		msg += fmt.Sprintf(" (HTTP %d)", e.HTTPStatus)
	case e.Err != nil:
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the kind and the cause, for errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	var out []error
	if e.kind != nil {
		out = append(out, e.kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

// IsTemporary reports whether err may go away by itself: a network
// failure, a timeout, HTTP 5xx or 429, or temporarily_unavailable.
func IsTemporary(err error) bool { return errors.Is(err, ErrTemporary) }

// codeKinds maps RFC 6749, RFC 8628 and OpenID Connect error codes to
// kinds.
var codeKinds = map[string]error{
	"invalid_grant":        ErrReconsent,
	"interaction_required": ErrReconsent, // OpenID Connect: a policy wants the user back
	"consent_required":     ErrReconsent,
	"login_required":       ErrReconsent,

	"invalid_client":         ErrInvalidClient,
	"unauthorized_client":    ErrInvalidClient,
	"invalid_scope":          ErrInvalidClient,
	"unsupported_grant_type": ErrInvalidClient,

	"access_denied":           ErrAccessDenied,
	"expired_token":           ErrExpired,
	"authorization_pending":   ErrAuthorizationPending,
	"temporarily_unavailable": ErrTemporary,
	"server_error":            ErrTemporary,
}

// classify turns an error of x/oauth2, net/http or a context into an
// *Error of op.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	out := &Error{Op: op, Err: err}
	var re *oauth2.RetrieveError
	switch {
	case errors.As(err, &re):
		out.Code, out.Description = re.ErrorCode, re.ErrorDescription
		if re.Response != nil {
			out.HTTPStatus = re.Response.StatusCode
		}
		out.kind = codeKinds[re.ErrorCode]
		if out.kind == nil && (out.HTTPStatus >= 500 || out.HTTPStatus == http.StatusTooManyRequests) {
			out.kind = ErrTemporary
		}
		if out.kind == nil && out.HTTPStatus == http.StatusUnauthorized {
			out.kind = ErrInvalidClient
		}
	case errors.Is(err, context.Canceled):
		// The caller gave up: not the provider's doing.
	case errors.Is(err, context.DeadlineExceeded):
		out.kind = ErrTemporary
	default:
		var ne net.Error
		var ue *url.Error
		if errors.As(err, &ne) || errors.As(err, &ue) {
			out.kind = ErrTemporary
		}
	}
	return out
}
