package upstream_test

import (
	"testing"

	"github.com/popbridge/popbridge/upstream"
)

func TestValidFlag(t *testing.T) {
	for f, want := range map[string]bool{
		`\Seen`: true, `\Deleted`: true, `\seen`: true, `\Draft`: true, "$POP3Deleted": true, "NonJunk": true,
		"": false, `\`: false, `\Recent`: false, `\Foo`: false, "a b": false, "a(": false, "a)": false, `a"`: false,
		"a*": false, "a%": false, "a]": false, "a{": false, "ä": false, `a\b`: false,
		string(make([]byte, 201)): false,
	} {
		if got := upstream.ValidFlag(f); got != want {
			t.Errorf("ValidFlag(%q) = %v, want %v", f, got, want)
		}
	}
}
