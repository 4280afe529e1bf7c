package upstream

import (
	"context"
	"slices"

	"github.com/emersion/go-imap/v2"
)

// SearchUIDs sends NOOP, then UID SEARCH UID set (split into commands of at
// most 8 KB), and returns those of uids that are still in the selected
// mailbox, ascending. The NOOP comes first because a server may keep a
// message that another session expunged in this session's view, and find it
// with SEARCH, until it has told this session (Dovecot does, measured);
// after the NOOP's EXPUNGE responses the view is current.
func (c *Conn) SearchUIDs(ctx context.Context, uids []uint32) ([]uint32, error) {
	const op = "search"
	if err := c.alive(op); err != nil {
		return nil, err
	}
	sets := uidChunks(uids, setBudget(len(" UID ")))
	if len(sets) == 0 {
		return nil, nil
	}
	w := c.watch(ctx)
	var present []uint32
	err := c.client.Noop().Wait()
	for _, set := range sets {
		if err != nil {
			break
		}
		w.touch()
		var data *imap.SearchData
		if data, err = c.client.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{set}}, nil).Wait(); err != nil {
			continue
		}
		for _, u := range data.AllUIDs() {
			present = append(present, uint32(u))
		}
	}
	if err := w.end(op, err, phaseCommand); err != nil {
		return nil, err
	}
	// Only what was asked for: a server may answer more than the set.
	asked := make(map[uint32]bool, len(uids))
	for _, u := range uids {
		asked[u] = true
	}
	present = slices.DeleteFunc(present, func(u uint32) bool { return !asked[u] })
	slices.Sort(present)
	return slices.Compact(present), nil
}
