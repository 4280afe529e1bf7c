package netlist

import (
	"net"
	"net/netip"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestParse(t *testing.T) {
	l, err := Parse([]string{"10.0.0.0/8", "::1", "::ffff:192.0.2.1", "2001:db8::/64"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "::1/128", "192.0.2.1/32", "2001:db8::/64"}
	for i, p := range l {
		if p.String() != want[i] {
			t.Errorf("%d: %s, want %s", i, p, want[i])
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", ""} {
		if _, err := Parse([]string{bad}); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
	if ip, ok := AddrIP(&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3")}); !ok || !Contains(l, ip) {
		t.Errorf("10.1.2.3 (mapped) not in %v", l)
	}
	if Contains(l, netip.MustParseAddr("192.0.2.2")) {
		t.Error("192.0.2.2 is in the list")
	}
}

func TestListFromTOML(t *testing.T) {
	var c struct {
		Nets List `toml:"nets"`
	}
	if _, err := toml.Decode(`nets = ["127.0.0.0/8", "::1"]`, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Nets) != 2 || c.Nets[1] != netip.MustParsePrefix("::1/128") {
		t.Errorf("decoded %v", c.Nets)
	}
	for _, bad := range []string{`nets = ["nonsense"]`, `nets = [1]`, `nets = "10.0.0.0/8"`} {
		if _, err := toml.Decode(bad, &c); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}
