package upstream

import (
	"context"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
)

// Select sends SELECT mailbox (read-write), with (CONDSTORE) when the server
// advertises CONDSTORE, and returns what the server reported. A mailbox
// that does not exist is KindPerm: NO [NONEXISTENT], and also a NO without
// a response code, which is how Dovecot 2.3 says it.
func (c *Conn) Select(ctx context.Context, mailbox string) (Status, error) {
	var sd *imap.SelectData
	err := c.call(ctx, "select", phaseSelect, func(*watch) (err error) {
		sd, err = c.client.Select(mailbox, &imap.SelectOptions{CondStore: c.HasCondStore()}).Wait()
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
