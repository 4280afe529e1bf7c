package bridge

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"go.uber.org/zap"
)

// DefaultUpstreamName is upstream.name when the configuration does not set
// it.
const DefaultUpstreamName = "default"

// MailboxKey names the mailbox record (and, with a device tag, the client
// records) of the mailbox of the account whose key (Bridge.accountKey) is
// accountKey on the upstream named upstreamName
// (upstream.name). It does not hold upstream.address: the address can be
// written another way, or changed when the account moves to another server,
// and the record stays; a new server is recognised by its UIDVALIDITY, and
// the re-match by fingerprint carries the UIDLs over.
//
// The account is escaped so that no "/" in it can make two keys equal; an
// upstream name holds no "/" (Config.Validate).
func MailboxKey(upstreamName, accountKey, mailbox string) string {
	return "upstream/" + upstreamName + "/" + url.PathEscape(accountKey) + "/" + mailbox
}

// mailboxKey names the mailbox record of account: every device of the
// account shares it.
func (b *Bridge) mailboxKey(account string) string {
	return MailboxKey(b.cfg.Upstream.Name, b.accountKey(account), b.cfg.Upstream.Mailbox)
}

// legacyMailboxKey is the name records had before they were keyed on
// upstream.name: the account and upstream.address, lowercased, as written in
// the configuration. It must stay exactly what those versions wrote.
func legacyMailboxKey(address, account, mailbox string) string {
	return "imap://" + strings.ToLower(account) + "@" + strings.ToLower(address) + "/" + mailbox
}

// adoptLegacy gives a record stored under the legacy key of account (by a
// version that keyed records on the address) the key mbox, with its client
// records, when mbox has no record yet. The store renames atomically and at
// most once, so concurrent logins of the account adopt it once between them.
// It runs before the record is synced, so that the sync finds it.
func (b *Bridge) adoptLegacy(ctx context.Context, account, mbox string, log *zap.Logger) error {
	if b.records.cache.version(mbox) != 0 {
		return nil // the record exists
	}
	legacy := legacyMailboxKey(b.cfg.Upstream.Address, account, b.cfg.Upstream.Mailbox)
	if legacy == mbox {
		return nil
	}
	done := b.metrics.timeStore("rename_mailbox")
	moved, err := b.store.RenameMailbox(ctx, legacy, mbox)
	done()
	if err != nil {
		return fmt.Errorf("adopting the state record of an earlier version: %w", err)
	}
	if moved {
		log.Info("adopted the state record that an earlier version kept under the upstream address; it is now keyed on upstream.name",
			zap.String("from", legacy), zap.String("to", mbox))
	}
	return nil
}

// accountKey is the one name of an upstream account in everything
// popbridge keeps about it: the mailbox record and the maildrop locks
// (mailboxKey), the counts of failed logins and of sessions (Limits,
// through AccountKey). Two logins get the same key exactly when the
// upstream takes them for the same account: with auth.fold_case, names
// that differ only in the case of ASCII letters (as Dovecot's %Lu folds
// them; a fold of other letters could join two accounts the upstream
// keeps apart); without it, the same name octet for octet.
func (b *Bridge) accountKey(account string) string {
	if !b.cfg.Auth.FoldCase {
		return account
	}
	return asciiLower(account)
}

// AccountKey returns the account key (accountKey) of a POP3 login name,
// device tag left out: what the per-account limits count by.
func (b *Bridge) AccountKey(login string) string {
	account, _ := b.splitLogin(login)
	return b.accountKey(account)
}

// asciiLower maps A-Z to a-z and leaves every other octet alone.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
