package imaptest

import (
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// providerConfig holds the behaviours of real providers a MemServer can
// imitate (WithPermanentFlags, WithMaxLogins, WithAllMail).
type providerConfig struct {
	// permanentFlags replaces SELECT's PERMANENTFLAGS; without `\*`, a
	// STORE of a keyword it does not list is refused with BAD.
	permanentFlags []imap.Flag
	maxLogins      int    // 0: no limit
	allMail        string // "": none
}

// Errors the imitated providers answer.
var (
	// ErrKeywordRefused is Exchange Online's answer to a STORE of a
	// keyword its PERMANENTFLAGS do not allow.
	ErrKeywordRefused = &imap.Error{Type: imap.StatusResponseTypeBad, Text: "Command Argument Error. 11"}
	// ErrTooManyLogins is Gmail's answer to one connection too many.
	ErrTooManyLogins = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "ALERT", Text: "Too many simultaneous connections. (Failure)"}
	// ErrThrottled is Microsoft 365's answer to a throttled user.
	ErrThrottled = &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Request is throttled. Suggested Backoff Time: 120000 milliseconds"}
	// ErrGmailThrottled is Gmail's.
	ErrGmailThrottled = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "THROTTLED", Text: "Account exceeded command or bandwidth limits. (Failure)"}
)

// WithPermanentFlags makes SELECT report PERMANENTFLAGS (flags) instead of
// imapmemserver's (\Seen \*); without `\*` among them, a STORE of a
// keyword not listed is refused with ErrKeywordRefused and changes
// nothing, as Exchange Online does.
func WithPermanentFlags(flags ...imap.Flag) Option {
	return func(c *memConfig) { c.provider.permanentFlags = append([]imap.Flag{}, flags...) }
}

// WithMaxLogins lets at most n client sessions be logged in at once (the
// helper connection is not counted); the next LOGIN gets
// ErrTooManyLogins, as Gmail and Microsoft limit connections per user.
func WithMaxLogins(n int) Option {
	return func(c *memConfig) { c.provider.maxLogins = n }
}

// WithAllMail imitates Gmail's labels: a message that UID EXPUNGE removes
// from INBOX is kept in mailbox allMail (created by the option, with the
// \All attribute), so that expunging from INBOX only archives it. A move
// to another mailbox (the Trash) does not keep it.
func WithAllMail(allMail string) Option {
	return func(c *memConfig) { c.provider.allMail = allMail }
}

// RefusedLogins returns how many LOGINs clients sent that the server refused
// because too many sessions were logged in (WithMaxLogins).
func (s *MemServer) RefusedLogins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refusedLogins
}

// admitLogin counts a client session against WithMaxLogins.
func (sess *session) admitLogin() error {
	if sess.s.isInternal(sess.addr) {
		return nil
	}
	s := sess.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.provider.maxLogins > 0 && s.logins >= s.provider.maxLogins {
		s.refusedLogins++
		return ErrTooManyLogins
	}
	s.logins++
	sess.counted = true
	return nil
}

// Close implements imapserver.Session.
func (sess *session) Close() error {
	if sess.counted {
		sess.s.mu.Lock()
		sess.s.logins--
		sess.s.mu.Unlock()
		sess.counted = false
	}
	return sess.UserSession.Close()
}

// refuseKeywords refuses flags with a keyword that WithPermanentFlags does
// not allow.
func (sess *session) refuseKeywords(flags []imap.Flag) error {
	pf := sess.s.provider.permanentFlags
	if pf == nil || sess.s.isInternal(sess.addr) {
		return nil
	}
	for _, f := range pf {
		if f == imap.FlagWildcard {
			return nil
		}
	}
	for _, f := range flags {
		if strings.HasPrefix(string(f), `\`) {
			continue
		}
		allowed := false
		for _, p := range pf {
			if strings.EqualFold(string(p), string(f)) {
				allowed = true
			}
		}
		if !allowed {
			return ErrKeywordRefused
		}
	}
	return nil
}

// keepInAllMail copies the messages a UID EXPUNGE of INBOX removes into the
// All Mail mailbox (WithAllMail), through the server's own user, so the
// expunge only archives them.
func (sess *session) keepInAllMail(uids *imap.UIDSet) error {
	all := sess.s.provider.allMail
	if all == "" || !strings.EqualFold(sess.selected, "INBOX") || sess.UserSession == nil {
		return nil
	}
	// Only the messages flagged \Deleted go, as the expunge does.
	data, err := sess.UserSession.Search(imapserver.NumKindUID, &imap.SearchCriteria{UID: []imap.UIDSet{*uids}, Flag: []imap.Flag{imap.FlagDeleted}}, &imap.SearchOptions{})
	if err != nil {
		return err
	}
	set, ok := data.All.(imap.UIDSet)
	if !ok || len(set) == 0 {
		return nil
	}
	if _, err := sess.UserSession.Copy(set, all); err != nil {
		return fmt.Errorf("imaptest: keeping expunged mail in %s: %w", all, err)
	}
	return nil
}
