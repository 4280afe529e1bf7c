package bridge

import (
	"errors"
	"strings"

	"github.com/popbridge/popbridge/state"
)

// StateKey returns the key of the client record of a POP3 login name
// ("alice@example.com#phone") under cfg, and so of its mailbox record
// (Mailbox): the account as the upstream reads it (auth.fold_case), the
// device tag split off (auth.device_separator), upstream.name and
// upstream.mailbox, exactly as a login names them. tagged reports whether
// the name carried a device separator.
func StateKey(cfg Config, login string) (key state.ClientKey, tagged bool, err error) {
	b := &Bridge{cfg: cfg}
	account, device := b.splitLogin(login)
	if account == "" {
		return state.ClientKey{}, false, errors.New("no account in " + login)
	}
	if !validDevice(device) {
		return state.ClientKey{}, false, errors.New("invalid device tag (letters, digits and ._-+=@ only, at most 64)")
	}
	tagged = cfg.Auth.DeviceSeparator != "" && strings.Contains(login, cfg.Auth.DeviceSeparator)
	return state.ClientKey{Mailbox: b.mailboxKey(account), Client: device}, tagged, nil
}

// MergedSources returns the name of the record of the source numbers of
// the merged maildrops whose own mailbox record is owner: its entries map
// a number (UID) to a source's mailbox record (UIDL).
func MergedSources(owner string) string { return sourcesRecord(owner) }

// MergedUIDL is the UIDL a merged maildrop lists for the message whose
// plain UIDL is uidl in the source numbered number.
func MergedUIDL(number uint32, uidl string) string { return mergedUIDL(number, uidl) }

// MergedClient is the device under which a merged maildrop of owner keeps
// device's client record in another source's mailbox record.
func MergedClient(device, owner string) string { return mergedClient(device, owner) }
