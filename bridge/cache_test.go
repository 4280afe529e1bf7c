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
