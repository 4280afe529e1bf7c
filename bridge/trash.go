package bridge

import (
	"context"
	"strings"

	"github.com/popbridge/popbridge/upstream"
)

// usualTrashNames are the names Trash mailboxes go by where none carries the
// \Trash attribute, written with '/' for the hierarchy delimiter.
var usualTrashNames = []string{"Trash", "Deleted Items", "Deleted Messages", "[Gmail]/Trash", "INBOX/Trash", "Deleted"}

// trashChoice is the mailbox the move policy moves to, and how it was found.
type trashChoice struct {
	Name string
	// How: "delete.move_to", "\Trash special-use", "by name", or
	// "to be created" (Create is then true: nothing has been created yet).
	How    string
	Create bool
}

// lister is what findTrash asks of the upstream (*upstream.Conn has it).
type lister interface {
	Mailboxes(ctx context.Context) ([]upstream.MailboxInfo, error)
}

// findTrash chooses the move policy's mailbox: delete.move_to when set;
// else the selectable mailbox with the \Trash special-use attribute; else
// the first existing mailbox with the profile's Trash name or a usual one
// (case-insensitively, in the server's hierarchy delimiter), in the
// server's spelling; else "Trash", to be created ("INBOX.Trash" where
// every mailbox lives under INBOX, as on Courier and Cyrus). It creates
// nothing.
func findTrash(ctx context.Context, c lister, moveTo string, p *Profile) (trashChoice, error) {
	if moveTo != "" {
		return trashChoice{Name: moveTo, How: "delete.move_to"}, nil
	}
	list, err := c.Mailboxes(ctx)
	if err != nil {
		return trashChoice{}, err
	}
	for _, m := range list {
		if m.Has(`\Trash`) && m.Selectable() {
			return trashChoice{Name: m.Name, How: `\Trash special-use`}, nil
		}
	}
	var delim rune
	underInbox := len(list) > 0
	for _, m := range list {
		if m.Delim != 0 {
			delim = m.Delim
		}
		if !strings.EqualFold(m.Name, "INBOX") && !hasInboxPrefix(m.Name, m.Delim) {
			underInbox = false
		}
	}
	names := usualTrashNames
	if p != nil && p.Trash != "" {
		names = append([]string{p.Trash}, usualTrashNames...)
	}
	for _, want := range names {
		if delim != 0 {
			want = strings.ReplaceAll(want, "/", string(delim))
		}
		for _, m := range list {
			if strings.EqualFold(m.Name, want) && m.Selectable() {
				return trashChoice{Name: m.Name, How: "by name"}, nil
			}
		}
	}
	name := "Trash"
	if underInbox && delim != 0 && len(list) > 1 {
		name = "INBOX" + string(delim) + "Trash"
	}
	return trashChoice{Name: name, How: "to be created", Create: true}, nil
}

func hasInboxPrefix(name string, delim rune) bool {
	return delim != 0 && len(name) > 6 && strings.EqualFold(name[:5], "INBOX") && strings.HasPrefix(name[5:], string(delim))
}

// flagChoice is what the flag policy sets on a mailbox, given what its
// PERMANENTFLAGS allow.
type flagChoice struct {
	Flags   []string // what is set; empty: nothing (the device hides them all the same)
	Refused []string // configured flags the server would not keep
}

// permittedFlags returns the flags of delete.flags that perm (SELECT's
// PERMANENTFLAGS) allows: the system flags, and the keywords it lists or
// allows with `\*`. When none is left, \Seen takes their place; \Deleted
// is never added.
func permittedFlags(configured, perm []string) flagChoice {
	var fc flagChoice
	for _, f := range configured {
		if upstream.Permits(perm, f) {
			fc.Flags = append(fc.Flags, f)
		} else {
			fc.Refused = append(fc.Refused, f)
		}
	}
	if len(fc.Flags) == 0 && len(fc.Refused) > 0 {
		fc.Flags = []string{`\Seen`}
	}
	return fc
}
