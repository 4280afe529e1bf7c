package imaptest

import (
	"reflect"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// session is the fault-injecting session of a MemServer: imapmemserver's
// UserSession with some methods overridden.
type session struct {
	*imapmemserver.UserSession // nil until Login
	s                          *MemServer
	addr                       string // the client's address
	selected                   string // the selected mailbox, "" when none
	counted                    bool   // counted in MemServer.logins
}

var _ imapserver.SessionIMAP4rev2 = (*session)(nil)

// fault applies Fail and Block to client connections.
func (sess *session) fault(cmd string) error {
	if sess.s.isInternal(sess.addr) {
		return nil
	}
	return sess.s.fault(cmd)
}

func (sess *session) Login(username, password string) error {
	if err := sess.fault("LOGIN"); err != nil {
		return err
	}
	return sess.login("LOGIN", username, password)
}

// login is LOGIN, or AUTHENTICATE PLAIN (mech), after the faults.
func (sess *session) login(mech, username, password string) error {
	if sess.s.oauth != nil && !sess.s.isInternal(sess.addr) {
		sess.recordAuth(mech, username, ErrPasswordRefused)
		return ErrPasswordRefused
	}
	err := sess.s.user.Login(username, password)
	if ok, set := sess.s.checkPassword(password); set && !sess.s.isInternal(sess.addr) {
		err = nil
		if !ok {
			err = imapserver.ErrAuthFailed
		}
		if username != sess.s.User {
			err = imapserver.ErrAuthFailed
		}
	}
	sess.recordAuth(mech, username, err)
	if err != nil {
		return err
	}
	if err := sess.admitLogin(); err != nil {
		return err
	}
	sess.UserSession = imapmemserver.NewUserSession(sess.s.user)
	return nil
}

func (sess *session) Select(mailbox string, options *imap.SelectOptions) (*imap.SelectData, error) {
	if err := sess.fault("SELECT"); err != nil {
		return nil, err
	}
	if err := sess.fault("SELECT " + mailbox); err != nil {
		return nil, err
	}
	data, err := sess.UserSession.Select(mailbox, options)
	if err != nil {
		return nil, err
	}
	sess.selected = mailbox
	if pf := sess.s.provider.permanentFlags; pf != nil {
		data.PermanentFlags = pf
	}
	return data, nil
}

func (sess *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	if err := sess.fault("FETCH"); err != nil {
		return err
	}
	return sess.UserSession.Fetch(w, numSet, options)
}

func (sess *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if err := sess.fault("STORE"); err != nil {
		return err
	}
	if err := sess.refuseKeywords(flags.Flags); err != nil {
		return err
	}
	return sess.UserSession.Store(w, numSet, flags, options)
}

// Expunge refuses, and fails the test, on a bare EXPUNGE or a CLOSE (uids
// is nil for both): popbridge must only ever send UID EXPUNGE.
func (sess *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if uids == nil {
		what := "a bare EXPUNGE"
		if isClose(w) {
			what = "CLOSE (an implicit bare EXPUNGE)"
		}
		sess.s.errorf("imaptest: the client sent %s: it would remove every \\Deleted message, not only its own", what)
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "imaptest: " + what + " is forbidden"}
	}
	if err := sess.fault("EXPUNGE"); err != nil {
		return err
	}
	if err := sess.keepInAllMail(uids); err != nil {
		return err
	}
	return sess.UserSession.Expunge(w, uids)
}

// isClose tells CLOSE from EXPUNGE: imapserver hands Expunge a writer
// without a connection for CLOSE, since CLOSE sends no EXPUNGE responses.
func isClose(w *imapserver.ExpungeWriter) bool {
	if w == nil {
		return true
	}
	f := reflect.ValueOf(w).Elem().FieldByName("conn")
	return f.IsValid() && f.Kind() == reflect.Pointer && f.IsNil()
}

func (sess *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	if err := sess.fault("COPY"); err != nil {
		return nil, err
	}
	return sess.UserSession.Copy(numSet, dest)
}

func (sess *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	if err := sess.fault("MOVE"); err != nil {
		return err
	}
	return sess.UserSession.Move(w, numSet, dest)
}

func (sess *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	if err := sess.fault("SEARCH"); err != nil {
		return nil, err
	}
	return sess.UserSession.Search(kind, criteria, options)
}

func (sess *session) Create(mailbox string, options *imap.CreateOptions) error {
	if err := sess.fault("CREATE"); err != nil {
		return err
	}
	if err := sess.UserSession.Create(mailbox, options); err != nil {
		return err
	}
	var attrs []imap.MailboxAttr
	if options != nil {
		attrs = options.SpecialUse
	}
	sess.s.mu.Lock()
	sess.s.specialUse[mailbox] = attrs
	sess.s.mu.Unlock()
	return nil
}

func (sess *session) Delete(mailbox string) error {
	if err := sess.UserSession.Delete(mailbox); err != nil {
		return err
	}
	sess.s.mu.Lock()
	delete(sess.s.specialUse, mailbox)
	sess.s.mu.Unlock()
	return nil
}

func (sess *session) Rename(mailbox, newName string, options *imap.RenameOptions) error {
	if err := sess.UserSession.Rename(mailbox, newName, options); err != nil {
		return err
	}
	sess.s.mu.Lock()
	sess.s.specialUse[newName] = sess.s.specialUse[mailbox]
	delete(sess.s.specialUse, mailbox)
	sess.s.mu.Unlock()
	return nil
}

// List lists the mailboxes the MemServer knows, with their special-use
// attributes (imapmemserver cannot hold them).
func (sess *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if err := sess.fault("LIST"); err != nil {
		return err
	}
	if len(patterns) == 0 || options.SelectSubscribed {
		return sess.UserSession.List(w, ref, patterns, options)
	}
	names, attrs := sess.s.mailboxes()
	for _, name := range names {
		match := false
		for _, p := range patterns {
			if imapserver.MatchList(name, '/', ref, p) {
				match = true
				break
			}
		}
		if !match {
			continue
		}
		if options.SelectSpecialUse && len(attrs[name]) == 0 {
			continue
		}
		data := &imap.ListData{Mailbox: name, Delim: '/', Attrs: attrs[name]}
		if options.ReturnStatus != nil {
			st, err := sess.s.user.Status(name, options.ReturnStatus)
			if err != nil {
				continue
			}
			data.Status = st
		}
		if err := w.WriteList(data); err != nil {
			return err
		}
	}
	return nil
}
