package bridge

import (
	"fmt"
	"strings"

	"github.com/popbridge/popbridge/upstream"
)

// Profile is what popbridge knows of one mail provider's IMAP service:
// where its Trash is, what an expunge means there, whether its sizes can be
// trusted, and how many connections an account may hold. Every provider
// difference is data in profiles; nothing else in popbridge asks which
// provider it talks to.
type Profile struct {
	Name string // upstream.profile's value
	// Hosts are the IMAP host names (or their domain suffixes, with a
	// leading dot) that name the provider.
	Hosts []string
	// Caps are capabilities only this provider advertises; IDNames the
	// names (or vendors) its ID answer gives.
	Caps    []string
	IDNames []string
	// Trash is the provider's Trash mailbox, looked for before the
	// usual names when no mailbox carries \Trash.
	Trash string
	// ExpungeArchives: UID EXPUNGE in INBOX does not delete, the message
	// stays in another folder (Gmail's All Mail). ExpungeNote says so.
	ExpungeArchives bool
	ExpungeNote     string
	// SizesUnreliable: RFC822.SIZE is not the octets the server sends, so
	// popbridge measures every new message at its first sync.
	SizesUnreliable bool
	// MaxConnections is the default of upstream.max_connections_per_account
	// (0: no limit).
	MaxConnections int
	// Fingerprint says what identifies a message across UIDVALIDITY
	// changes there.
	Fingerprint string
	// LimitedView: the server may show only the newest part of a large
	// mailbox (Yahoo's limited mode); popbridge logs what it can see.
	LimitedView bool
	// Note is shown by `popbridge check`.
	Note string
}

const fingerprintDefault = "Message-ID + INTERNALDATE + RFC822.SIZE (content digest on ties)"

// profiles are the providers popbridge knows; "generic" is any other
// server. Order matters for recognition: the first that matches wins.
var profiles = []*Profile{
	{
		Name:            "gmail",
		Hosts:           []string{"imap.gmail.com", "imap.googlemail.com"},
		Caps:            []string{"X-GM-EXT-1"},
		Trash:           "[Gmail]/Trash",
		ExpungeArchives: true,
		ExpungeNote: "on Gmail, expunging from INBOX removes only the Inbox label: the message stays in [Gmail]/All Mail (archived, not deleted); " +
			"use delete.policy = \"move\" (the default), which moves it to [Gmail]/Trash, where Gmail deletes it after 30 days",
		MaxConnections: 15,
		Fingerprint: fingerprintDefault + "; Gmail's X-GM-MSGID would be stable across UIDVALIDITY changes, but the IMAP library " +
			"(go-imap v2 beta.8) cannot parse it, so it is not used",
		Note: "Gmail allows about 15 simultaneous IMAP connections per account and answers [THROTTLED] beyond its bandwidth limits",
	},
	{
		Name:            "microsoft365",
		Hosts:           []string{"outlook.office365.com", "outlook.office.com", ".office365.com"},
		IDNames:         []string{"Microsoft Exchange"},
		Trash:           "Deleted Items",
		SizesUnreliable: true,
		MaxConnections:  20,
		Fingerprint:     fingerprintDefault,
		Note:            "Exchange Online's RFC822.SIZE is not the octets it sends (sizes are measured), its PERMANENTFLAGS allow no keywords, and it throttles (\"Request is throttled\")",
	},
	{
		Name:            "outlook",
		Hosts:           []string{"imap-mail.outlook.com", "outlook.live.com", ".hotmail.com"},
		Trash:           "Deleted",
		SizesUnreliable: true,
		MaxConnections:  20,
		Fingerprint:     fingerprintDefault,
		Note:            "Outlook.com runs on Exchange: sizes are measured, keywords are refused, connections are limited",
	},
	{
		Name:        "icloud",
		Hosts:       []string{"imap.mail.me.com", ".mail.me.com"},
		Trash:       "Deleted Messages",
		Fingerprint: fingerprintDefault,
		Note:        "iCloud's Trash is \"Deleted Messages\" and carries no \\Trash attribute; log in with an app-specific password",
	},
	{
		Name:        "yahoo",
		Hosts:       []string{"imap.mail.yahoo.com", "imap.aol.com", "export.imap.mail.yahoo.com"},
		Trash:       "Trash",
		LimitedView: true,
		Fingerprint: fingerprintDefault,
		Note: "Yahoo's default \"limited mode\" may show IMAP only the newest part of a large mailbox; " +
			"popbridge logs when UIDNEXT says more was delivered than the mailbox shows",
	},
	{
		Name:        "fastmail",
		Hosts:       []string{"imap.fastmail.com", ".fastmail.com", ".messagingengine.com"},
		Trash:       "Trash",
		Fingerprint: fingerprintDefault,
		Note:        "Fastmail keeps standard IMAP: \\Trash special-use, keywords, exact sizes",
	},
	{
		Name:        "generic",
		Fingerprint: fingerprintDefault,
	},
}

// ProfileAuto is upstream.profile's default: recognize the provider.
const ProfileAuto = "auto"

// profileNamed returns the profile called name, or nil.
func profileNamed(name string) *Profile {
	for _, p := range profiles {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// profileNames lists the values upstream.profile takes.
func profileNames() []string {
	out := []string{ProfileAuto}
	for _, p := range profiles {
		out = append(out, p.Name)
	}
	return out
}

// profileOfHost returns the profile whose host names match host, or nil.
func profileOfHost(host string) *Profile {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, p := range profiles {
		for _, h := range p.Hosts {
			if host == h || strings.HasPrefix(h, ".") && strings.HasSuffix(host, h) {
				return p
			}
		}
	}
	return nil
}

// recognize returns the profile of the upstream at host whose capabilities
// and ID answer are caps and id: by host name first, then by a capability
// only one provider has, then by the ID answer; "generic" when nothing
// matches.
func recognize(host string, caps func(string) bool, id upstream.ServerID) *Profile {
	if p := profileOfHost(host); p != nil {
		return p
	}
	for _, p := range profiles {
		for _, c := range p.Caps {
			if caps != nil && caps(c) {
				return p
			}
		}
		for _, n := range p.IDNames {
			if strings.EqualFold(id.Name, n) || strings.EqualFold(id.Vendor, n) {
				return p
			}
		}
	}
	return profileNamed("generic")
}

// resolveProfile returns the profile of upstream.profile: the one named,
// or for "auto" the one recognize finds.
func resolveProfile(setting, host string, caps func(string) bool, id upstream.ServerID) *Profile {
	if setting != "" && setting != ProfileAuto {
		if p := profileNamed(setting); p != nil {
			return p
		}
	}
	return recognize(host, caps, id)
}

// maxConnections is the account's upstream connection budget: the
// configured upstream.max_connections_per_account, or the profile's (-1 in
// the configuration means none).
func maxConnections(configured int, p *Profile) int {
	switch {
	case configured > 0:
		return configured
	case configured < 0:
		return 0
	case p != nil:
		return p.MaxConnections
	}
	return 0
}

func validProfile(name string) error {
	if name == "" || name == ProfileAuto || profileNamed(name) != nil {
		return nil
	}
	return fmt.Errorf("unknown profile %q (want %s)", name, strings.Join(profileNames(), ", "))
}
