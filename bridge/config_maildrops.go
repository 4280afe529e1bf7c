package bridge

import (
	"fmt"
	"strings"

	"github.com/popbridge/popbridge/pop3"
)

// MaildropConfig is one [[maildrops]] table: a merged maildrop, one POP3
// maildrop listing the messages of several mailboxes (merged.go). A login
// of Account (and, when Device is set, only with that device tag) is served
// from Sources instead of the one configured mailbox.
type MaildropConfig struct {
	// Account is the account part of the POP3 login name (no device tag),
	// compared as the upstream compares names (auth.fold_case).
	Account string `toml:"account"`
	// Device, when set, limits the table to logins with this device tag;
	// a table with the device wins over one without.
	Device string `toml:"device"`
	// Sources are the mailboxes listed, in this order: "Junk" is a mailbox
	// of the login's own account; { account = "bob@example.org",
	// mailbox = "INBOX" } a mailbox of another enrolled account (the login
	// must be enrolled too, and accounts.server_key_file set).
	Sources []MaildropSource `toml:"sources"`
	// Dedup lists a message whose Message-ID a message of an earlier
	// source has only once: the later one is left out.
	Dedup bool `toml:"dedup"`
}

// maxSources bounds the sources of a merged maildrop: each holds an
// upstream connection for the whole session.
const maxSources = 16

// MaildropSource is one source of a merged maildrop: a mailbox of the
// login's own account (Account empty), or of another enrolled account. In
// the configuration it is a string (the mailbox) or a table { account,
// mailbox }.
type MaildropSource struct {
	Account string
	Mailbox string
}

// UnmarshalText implements encoding.TextUnmarshaler: a mailbox of the
// login's own account.
func (s *MaildropSource) UnmarshalText(b []byte) error {
	*s = MaildropSource{Mailbox: string(b)}
	return nil
}

// UnmarshalTOML reads a source from a string or an inline table
// { account = "...", mailbox = "..." }.
func (s *MaildropSource) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*s = MaildropSource{Mailbox: v}
		return nil
	case map[string]any:
		var out MaildropSource
		for k, val := range v {
			str, ok := val.(string)
			if !ok {
				return fmt.Errorf("source key %q must be a string", k)
			}
			switch k {
			case "account":
				out.Account = str
			case "mailbox":
				out.Mailbox = str
			default:
				return fmt.Errorf("unknown source key %q (want account and mailbox)", k)
			}
		}
		if out.Account == "" {
			return fmt.Errorf(`a source table names another account: { account = "...", mailbox = "..." }; write a mailbox of the login's own account as a string`)
		}
		*s = out
		return nil
	}
	return fmt.Errorf(`a source is a mailbox name ("Junk") or a table { account = "...", mailbox = "..." }`)
}

// String names the source in logs and errors.
func (s MaildropSource) String() string {
	if s.Account == "" {
		return s.Mailbox
	}
	return s.Account + " " + s.Mailbox
}

func (c *Config) validateMaildrops(p *problems) {
	seen := map[string]int{}
	for i, md := range c.Maildrops {
		key := fmt.Sprintf("maildrops[%d].", i)
		switch {
		case md.Account == "":
			p.add(key+"account", "is required (the account part of the POP3 login name)")
		case pop3.CheckLoginName(md.Account) != nil:
			p.add(key+"account", "%q is not a login name popbridge accepts", md.Account)
		case c.Auth.DeviceSeparator != "" && strings.Contains(md.Account, c.Auth.DeviceSeparator):
			p.add(key+"account", "%q holds the device separator %q: put the device tag in device", md.Account, c.Auth.DeviceSeparator)
		}
		if md.Device != "" && !validDevice(md.Device) {
			p.add(key+"device", "%q: letters, digits and ._-+=@ only, at most 64", md.Device)
		}
		who := c.foldName(md.Account) + "\x00" + md.Device
		if j, dup := seen[who]; dup && md.Account != "" {
			p.add(key+"account", "%q (device %q) has a merged maildrop already (maildrops[%d])", md.Account, md.Device, j)
		}
		seen[who] = i
		switch {
		case len(md.Sources) == 0:
			p.add(key+"sources", "names no mailbox: list at least one, in the order their messages are listed")
		case len(md.Sources) > maxSources:
			p.add(key+"sources", "%d sources; at most %d (each holds an upstream connection)", len(md.Sources), maxSources)
		}
		have := map[string]bool{}
		for j, s := range md.Sources {
			sk := fmt.Sprintf("%ssources[%d]", key, j)
			switch {
			case s.Mailbox == "":
				p.add(sk, "the mailbox name is empty")
			case strings.ContainsAny(s.Mailbox, "\r\n\x00"):
				p.add(sk, "the mailbox name %q holds a line break or NUL", s.Mailbox)
			}
			if s.Account != "" {
				if pop3.CheckLoginName(s.Account) != nil {
					p.add(sk, "account %q is not a login name popbridge accepts", s.Account)
				}
				if c.Accounts.ServerKeyFile == "" {
					p.add(sk, "a mailbox of another account (%s) needs accounts.server_key_file: popbridge opens that account's grant with the server key", s.Account)
				}
			}
			id := c.foldName(s.Account) + "\x00" + s.Mailbox
			if have[id] {
				p.add(sk, "%s is listed twice", s)
			}
			have[id] = true
		}
	}
}

// foldName is an account name as accountKey compares it.
func (c *Config) foldName(name string) string {
	if c.Auth.FoldCase {
		return asciiLower(name)
	}
	return name
}

// maildropFor returns the [[maildrops]] table serving (account, device):
// the one with that device, else the one without a device, else nil.
func (c *Config) maildropFor(account, device string) *MaildropConfig {
	var any *MaildropConfig
	acct := c.foldName(account)
	for i := range c.Maildrops {
		md := &c.Maildrops[i]
		if c.foldName(md.Account) != acct {
			continue
		}
		if md.Device == device && device != "" {
			return md
		}
		if md.Device == "" {
			any = md
		}
	}
	return any
}
