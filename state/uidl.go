package state

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultUIDLFormat is what Dovecot 2.3 uses by default (pop3_uidl_format):
// the UID and then the UIDVALIDITY, each as 8 lowercase hex digits. A site
// that moves from Dovecot pop3+imapc to popbridge keeps its UIDLs.
const DefaultUIDLFormat = "%08Xu%08Xv"

// CheckUIDLFormat reports whether format is a UIDL template popbridge can
// expand: literal characters in 0x21–0x7E except '%', and the variables %u
// (UID) and %v (UIDVALIDITY), each optionally with a zero-padded width and X
// (hex) as in Dovecot: %u, %08Xu, %Xv. It must hold %u, so that two messages
// never share a UIDL.
func CheckUIDLFormat(format string) error {
	_, err := parseUIDLFormat(format)
	return err
}

type uidlPart struct {
	lit   string
	vr    byte // 'u', 'v' or 0 for a literal
	width int
	hex   bool
}

func parseUIDLFormat(format string) ([]uidlPart, error) {
	var parts []uidlPart
	hasUID := false
	for i := 0; i < len(format); {
		c := format[i]
		if c != '%' {
			if c < 0x21 || c > 0x7e {
				return nil, fmt.Errorf("uidl format %q: character %q not allowed (RFC 1939 §7: 0x21–0x7E)", format, c)
			}
			j := strings.IndexByte(format[i:], '%')
			if j < 0 {
				j = len(format) - i
			}
			lit := format[i : i+j]
			for k := 0; k < len(lit); k++ {
				if lit[k] < 0x21 || lit[k] > 0x7e {
					return nil, fmt.Errorf("uidl format %q: character %q not allowed (RFC 1939 §7: 0x21–0x7E)", format, lit[k])
				}
			}
			parts = append(parts, uidlPart{lit: lit})
			i += j
			continue
		}
		i++
		var p uidlPart
		start := i
		for i < len(format) && format[i] >= '0' && format[i] <= '9' {
			i++
		}
		if i > start {
			w, _ := strconv.Atoi(format[start:i])
			if w > 10 {
				return nil, fmt.Errorf("uidl format %q: width %d too large", format, w)
			}
			p.width = w
		}
		if i < len(format) && (format[i] == 'X' || format[i] == 'x') {
			p.hex = true
			i++
		}
		if i >= len(format) || (format[i] != 'u' && format[i] != 'v') {
			return nil, fmt.Errorf("uidl format %q: only %%u and %%v are known", format)
		}
		p.vr = format[i]
		if p.vr == 'u' {
			hasUID = true
		}
		i++
		parts = append(parts, p)
	}
	if !hasUID {
		return nil, fmt.Errorf("uidl format %q: must contain %%u", format)
	}
	longest := 0
	for _, p := range parts {
		longest += len(p.lit)
		if p.vr != 0 {
			longest += max(p.width, 10)
		}
	}
	if longest > 70 {
		return nil, fmt.Errorf("uidl format %q: UIDLs could reach %d characters; RFC 1939 §7 allows 70", format, longest)
	}
	return parts, nil
}

// UIDLFormatter expands a checked UIDL format. Its zero value is not
// usable; it decodes itself from configuration text (UnmarshalText).
type UIDLFormatter struct {
	template string
	parts    []uidlPart
}

// NewUIDLFormatter parses format (see CheckUIDLFormat).
func NewUIDLFormatter(format string) (*UIDLFormatter, error) {
	parts, err := parseUIDLFormat(format)
	if err != nil {
		return nil, err
	}
	return &UIDLFormatter{template: format, parts: parts}, nil
}

// MustUIDLFormatter is NewUIDLFormatter for a format known to be good.
func MustUIDLFormatter(format string) UIDLFormatter {
	f, err := NewUIDLFormatter(format)
	if err != nil {
		panic(err)
	}
	return *f
}

// UnmarshalText implements encoding.TextUnmarshaler: it checks the
// template as CheckUIDLFormat does.
func (f *UIDLFormatter) UnmarshalText(b []byte) error {
	g, err := NewUIDLFormatter(string(b))
	if err != nil {
		return err
	}
	*f = *g
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (f UIDLFormatter) MarshalText() ([]byte, error) { return []byte(f.template), nil }

// String returns the template.
func (f UIDLFormatter) String() string { return f.template }

// Format returns the UIDL for uid in uidValidity.
func (f *UIDLFormatter) Format(uid, uidValidity uint32) string {
	var buf [72]byte
	b := buf[:0]
	for _, p := range f.parts {
		if p.vr == 0 {
			b = append(b, p.lit...)
			continue
		}
		n := uid
		if p.vr == 'v' {
			n = uidValidity
		}
		base := 10
		if p.hex {
			base = 16
		}
		var digits [10]byte
		d := strconv.AppendUint(digits[:0], uint64(n), base)
		for i := len(d); i < p.width; i++ {
			b = append(b, '0')
		}
		b = append(b, d...)
	}
	return string(b)
}
