package upstream

import (
	"context"
	"slices"

	"github.com/emersion/go-imap/v2"
)

// SearchUIDs sends UID SEARCH UID set (split into commands of at most 8 KB)
// and returns those of uids that are still in the selected mailbox,
// ascending. Messages another session expunged are not among them: the
// server reports the mailbox as it is when the command runs.
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
	var err error
	for _, set := range sets {
		w.touch()
		var data *imap.SearchData
		if data, err = c.client.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{set}}, nil).Wait(); err != nil {
			break
		}
		for _, u := range data.AllUIDs() {
			present = append(present, uint32(u))
		}
	}
	if err := w.end(op, err, phaseCommand); err != nil {
		return nil, err
	}
	// Only what was asked for: a server may answer more than the set.
	present = slices.DeleteFunc(present, func(u uint32) bool { return !slices.Contains(uids, u) })
	slices.Sort(present)
	return slices.Compact(present), nil
}
