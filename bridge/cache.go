package bridge

import (
	"sync"

	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state"
)

// maxCachedEntries bounds the messages held by the record cache, over all
// mailboxes: about 60 MB at 100 bytes a message.
const maxCachedEntries = 600_000

// snapshot is a mailbox record as sessions share it: read-only.
type snapshot struct {
	rec  *state.Mailbox
	msgs []pop3.Message // every entry, for a client that hides nothing
	uids []uint32
	used uint64 // cache clock at the last use
}

// recordCache keeps the newest record of each busy mailbox in memory, so that
// a poll of an unchanged mailbox reads neither the store's entries nor the
// upstream's listing, and so that the sessions of one mailbox share one
// message list instead of a copy each.
type recordCache struct {
	mu      sync.Mutex
	m       map[string]*snapshot
	entries int
	clock   uint64
}

func newRecordCache() *recordCache { return &recordCache{m: make(map[string]*snapshot)} }

// get returns the snapshot of mbox if it holds version.
func (c *recordCache) get(mbox string, version uint64) *snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.m[mbox]
	if s == nil || s.rec.Version != version {
		return nil
	}
	c.clock++
	s.used = c.clock
	return s
}

// version returns the version of the cached record of mbox, or 0.
func (c *recordCache) version(mbox string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.m[mbox]; s != nil {
		return s.rec.Version
	}
	return 0
}

// put returns the snapshot of rec, caching it unless a newer record of
// mbox is cached already. rec must not be modified afterwards.
func (c *recordCache) put(mbox string, rec *state.Mailbox) *snapshot {
	if s := c.get(mbox, rec.Version); s != nil {
		return s
	}
	s := &snapshot{rec: rec}
	if old := c.latest(mbox); old != nil && sameList(old, rec) {
		// Only what no session sees changed (fingerprints, digests: the
		// background completion): share the message list.
		s.msgs, s.uids = old.msgs, old.uids
	} else {
		s.msgs, s.uids = make([]pop3.Message, len(rec.Entries)), make([]uint32, len(rec.Entries))
		for i, e := range rec.Entries {
			s.msgs[i] = pop3.Message{Size: e.Size, UIDL: e.UIDL}
			s.uids[i] = e.UID
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[mbox]; old != nil {
		if old.rec.Version > rec.Version {
			return s
		}
		c.entries -= len(old.rec.Entries)
	}
	c.clock++
	s.used = c.clock
	c.m[mbox] = s
	c.entries += len(rec.Entries)
	for c.entries > maxCachedEntries && len(c.m) > 1 {
		var lru string
		for k, v := range c.m {
			if k != mbox && (lru == "" || v.used < c.m[lru].used) {
				lru = k
			}
		}
		c.entries -= len(c.m[lru].rec.Entries)
		delete(c.m, lru)
	}
	return s
}

// latest returns the cached snapshot of mbox, whatever its version, or nil.
func (c *recordCache) latest(mbox string) *snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[mbox]
}

// sameList reports whether s lists the messages of rec: the same UIDs,
// UIDLs and sizes, in the same order.
func sameList(s *snapshot, rec *state.Mailbox) bool {
	if len(s.uids) != len(rec.Entries) {
		return false
	}
	for i, e := range rec.Entries {
		if s.uids[i] != e.UID || s.msgs[i].UIDL != e.UIDL || s.msgs[i].Size != e.Size {
			return false
		}
	}
	return true
}
