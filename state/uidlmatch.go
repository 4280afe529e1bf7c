package state

import (
	"regexp"
	"strconv"
	"strings"
)

// MayIssue reports whether u has the shape of a UIDL that f gives a
// message in uidValidity: its literal parts, the UIDVALIDITY as f writes
// it, and digits where the UID goes. A UIDL carried over from another
// server (import-uidl) that popbridge might one day issue to a new message
// must not be stored: after the imported message is gone, a new message
// could get it, and a client that downloaded the old one would never
// download the new one. It errs on the side of yes.
func (f *UIDLFormatter) MayIssue(u string, uidValidity uint32) bool {
	var b strings.Builder
	b.WriteString("^")
	for _, p := range f.parts {
		switch p.vr {
		case 0:
			b.WriteString(regexp.QuoteMeta(p.lit))
		case 'v':
			base := 10
			if p.hex {
				base = 16
			}
			d := strconv.FormatUint(uint64(uidValidity), base)
			b.WriteString("(?i)0*" + regexp.QuoteMeta(d) + "(?-i)")
		case 'u':
			digits := "[0-9]"
			if p.hex {
				digits = "[0-9a-fA-F]"
			}
			b.WriteString(digits + "{" + strconv.Itoa(max(p.width, 1)) + ",}")
		}
	}
	// Issued UIDLs that were taken get a suffix "-N".
	b.WriteString("(-[0-9]+)?$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return true
	}
	return re.MatchString(u)
}
