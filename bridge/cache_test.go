package bridge

import (
	"fmt"
	"testing"

	"github.com/popbridge/popbridge/state"
)

func record(version uint64, n int) *state.Mailbox {
	m := &state.Mailbox{Version: version}
	for i := range n {
		m.Entries = append(m.Entries, state.Entry{UID: uint32(i + 1), UIDL: fmt.Sprint("u", i+1), Size: int64(100 + i)})
	}
	return m
}

func TestRecordCache(t *testing.T) {
	c := newRecordCache()
	s := c.put("a", record(2, 3))
	if len(s.msgs) != 3 || s.msgs[2].UIDL != "u3" || s.msgs[2].Size != 102 || s.uids[2] != 3 {
		t.Fatalf("snapshot = %+v", s)
	}
	if c.get("a", 2) != s || c.get("a", 1) != nil || c.get("b", 2) != nil {
		t.Error("get does not match versions")
	}
	if again := c.put("a", record(2, 3)); again != s {
		t.Error("the same version was built twice")
	}
	// An older record does not replace a newer one.
	c.put("a", record(1, 5))
	if c.version("a") != 2 {
		t.Errorf("version = %d after putting an older record", c.version("a"))
	}
	// Over the bound, the least recently used mailbox goes.
	c.put("big1", record(1, maxCachedEntries/2))
	c.get("a", 2)
	c.put("big2", record(1, maxCachedEntries/2))
	if c.version("big1") != 0 || c.version("a") != 2 || c.version("big2") != 1 {
		t.Errorf("after eviction: big1 %d, a %d, big2 %d", c.version("big1"), c.version("a"), c.version("big2"))
	}
	if c.entries > maxCachedEntries {
		t.Errorf("cache holds %d entries", c.entries)
	}
}

// TestRecordCacheSharesList: a newer record that differs only in what no
// session sees (the fingerprints a completion adds) shares the message
// list of the cached one; one whose sizes or UIDLs differ gets its own.
func TestRecordCacheSharesList(t *testing.T) {
	c := newRecordCache()
	s2 := c.put("a", record(2, 3))
	r3 := record(3, 3)
	for i := range r3.Entries {
		r3.Entries[i].Fingerprint = fmt.Sprint("f", i)
	}
	s3 := c.put("a", r3)
	if s3.rec != r3 || &s3.msgs[0] != &s2.msgs[0] || &s3.uids[0] != &s2.uids[0] {
		t.Error("fingerprints added: the message list was built again")
	}
	r4 := record(4, 3)
	r4.Entries[1].Size = 7
	s4 := c.put("a", r4)
	if &s4.msgs[0] == &s3.msgs[0] || s4.msgs[1].Size != 7 || s3.msgs[1].Size != 101 {
		t.Errorf("a size changed: msgs %+v, before %+v", s4.msgs, s3.msgs)
	}
	r5 := record(5, 3)
	r5.Entries[2].UIDL = "other"
	if s5 := c.put("a", r5); s5.msgs[2].UIDL != "other" || s4.msgs[2].UIDL != "u3" {
		t.Errorf("a UIDL changed: msgs %+v", s5.msgs)
	}
	if s6 := c.put("a", record(6, 2)); len(s6.msgs) != 2 {
		t.Errorf("a message fewer: msgs %+v", s6.msgs)
	}
}
