package upstream

import (
	"context"
	"errors"
	"strings"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
)

// Select sends SELECT mailbox (read-write), with (CONDSTORE) when the server
// advertises CONDSTORE, and returns what the server reported. A mailbox
// that does not exist is KindPerm: NO [NONEXISTENT], and also a NO without
// a response code, which is how Dovecot 2.3 says it.
func (c *Conn) Select(ctx context.Context, mailbox string) (Status, error) {
	return c.selectWith(ctx, mailbox, nil, nil)
}

// selectWith is Select with before run just before the SELECT is sent
// and after just after (Resume ends IDLE around it).
func (c *Conn) selectWith(ctx context.Context, mailbox string, before func() error, after func()) (Status, error) {
	var sd *imap.SelectData
	err := c.call(ctx, "select", phaseSelect, func(*watch) (err error) {
		if before != nil {
			if err := before(); err != nil {
				return err
			}
		}
		cmd := c.client.Select(mailbox, &imap.SelectOptions{CondStore: c.HasCondStore()})
		if after != nil {
			after()
		}
		sd, err = cmd.Wait()
		return err
	})
	if err != nil {
		return Status{}, err
	}
	st := Status{
		UIDValidity:   sd.UIDValidity,
		UIDNext:       uint32(sd.UIDNext),
		NumMessages:   sd.NumMessages,
		HighestModSeq: sd.HighestModSeq,
	}
	if sd.PermanentFlags != nil {
		st.PermanentFlags = make([]string, len(sd.PermanentFlags))
		for i, f := range sd.PermanentFlags {
			st.PermanentFlags[i] = string(f)
		}
	}
	c.log.Debug("upstream select", zap.String("mailbox", mailbox),
		zap.Uint32("uidvalidity", st.UIDValidity), zap.Uint32("uidnext", st.UIDNext),
		zap.Uint32("messages", st.NumMessages))
	return st, nil
}

// Noop sends NOOP.
func (c *Conn) Noop(ctx context.Context) error {
	return c.call(ctx, "noop", phaseCommand, func(*watch) error {
		return c.client.Noop().Wait()
	})
}

// Permits reports whether keyword flag may be set for good in the mailbox
// whose PERMANENTFLAGS are perm: perm is nil (the server sent none: every
// flag is permanent, RFC 9051 §7.1), perm lists the keyword
// (case-insensitively), or perm holds `\*`. A system flag (\Seen ...) is
// always permitted: servers accept a STORE of one (imapmemserver lists
// only the flags in use), and the flag policy never sets \Deleted.
func Permits(perm []string, flag string) bool {
	if perm == nil || strings.HasPrefix(flag, `\`) {
		return true
	}
	for _, f := range perm {
		if strings.EqualFold(f, flag) || f == `\*` {
			return true
		}
	}
	return false
}

// MailboxInfo is one mailbox of a LIST.
type MailboxInfo struct {
	Name  string
	Delim rune     // the hierarchy delimiter, 0 when flat
	Attrs []string // `\Trash`, `\Noselect`, `\HasChildren` ...
}

// Selectable reports whether the mailbox can hold messages.
func (m MailboxInfo) Selectable() bool {
	return !hasAttr(attrsOf(m.Attrs), imap.MailboxAttrNoSelect) && !hasAttr(attrsOf(m.Attrs), imap.MailboxAttrNonExistent)
}

// Has reports whether the mailbox has attribute attr (case-insensitively).
func (m MailboxInfo) Has(attr string) bool { return hasAttr(attrsOf(m.Attrs), imap.MailboxAttr(attr)) }

func attrsOf(s []string) []imap.MailboxAttr {
	out := make([]imap.MailboxAttr, len(s))
	for i, a := range s {
		out[i] = imap.MailboxAttr(a)
	}
	return out
}

// Mailboxes sends LIST "" "*" (with RETURN (SPECIAL-USE) when the server
// has SPECIAL-USE and LIST-EXTENDED) and returns every mailbox with its
// attributes, in the server's order.
func (c *Conn) Mailboxes(ctx context.Context) ([]MailboxInfo, error) {
	const op = "list"
	if err := c.alive(op); err != nil {
		return nil, err
	}
	var opts *imap.ListOptions
	if caps := c.Caps(); caps.Has(imap.CapSpecialUse) && caps.Has(imap.CapListExtended) {
		opts = &imap.ListOptions{ReturnSpecialUse: true}
	}
	w := c.watch(ctx)
	cmd := c.client.List("", "*", opts)
	var out []MailboxInfo
	for d := cmd.Next(); d != nil; d = cmd.Next() {
		w.touch()
		mi := MailboxInfo{Name: d.Mailbox, Delim: d.Delim}
		for _, a := range d.Attrs {
			mi.Attrs = append(mi.Attrs, string(a))
		}
		out = append(out, mi)
	}
	if err := w.end(op, cmd.Close(), phaseCommand); err != nil {
		return nil, err
	}
	return out, nil
}

// HasCreateSpecialUse reports whether CREATE may name a special use
// (RFC 6154 CREATE-SPECIAL-USE).
func (c *Conn) HasCreateSpecialUse() bool { return c.Caps().Has(imap.CapCreateSpecialUse) }

// Create sends CREATE name, with (USE (specialUse)) when specialUse is not
// "" and the server has CREATE-SPECIAL-USE. A mailbox that exists already
// (NO [ALREADYEXISTS]) is not an error. It creates a mailbox and touches
// no message.
func (c *Conn) Create(ctx context.Context, name, specialUse string) error {
	const op = "create"
	var opts *imap.CreateOptions
	if specialUse != "" && c.HasCreateSpecialUse() {
		opts = &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttr(specialUse)}}
	}
	err := c.call(ctx, op, phaseCommand, func(*watch) error {
		return c.client.Create(name, opts).Wait()
	})
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Code == imap.ResponseCodeAlreadyExists {
		return nil
	}
	return err
}
