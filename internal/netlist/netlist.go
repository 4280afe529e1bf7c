// Package netlist parses the lists of addresses and networks that the
// configuration names (trusted proxies, networks exempt from limits) and
// answers whether a connection's peer is in one.
package netlist

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Parse parses addresses ("10.1.2.3", "::1") and networks ("10.0.0.0/8")
// into prefixes. IPv4-mapped IPv6 addresses are unmapped.
func Parse(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or a network (CIDR)", s)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or a network (CIDR)", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// AddrIP returns the IP address of a, unmapped, or false when a is not an
// IP address (a pipe in tests).
func AddrIP(a net.Addr) (netip.Addr, bool) {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, ok := netip.AddrFromSlice(ta.IP)
		return ip.Unmap(), ok
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// Contains reports whether ip is in one of the prefixes.
func Contains(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// List is a list of networks in a configuration file: an array of
// addresses and networks, parsed as Parse does when the file is decoded.
type List []netip.Prefix

// MustParse is Parse for a list known to be good.
func MustParse(list ...string) List {
	l, err := Parse(list)
	if err != nil {
		panic(err)
	}
	return l
}

// UnmarshalTOML decodes a TOML array of strings (BurntSushi/toml's
// Unmarshaler).
func (l *List) UnmarshalTOML(v any) error {
	arr, ok := v.([]any)
	if !ok {
		return fmt.Errorf("want an array of addresses and networks, not %T", v)
	}
	strs := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return fmt.Errorf("want an array of strings, not a %T", e)
		}
		strs[i] = s
	}
	p, err := Parse(strs)
	if err != nil {
		return err
	}
	*l = p
	return nil
}
