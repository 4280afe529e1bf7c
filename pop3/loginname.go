package pop3

import (
	"unicode"
	"unicode/utf8"
)

// MaxLoginNameLength is the longest login name accepted, in octets (an
// e-mail address has at most 254, RFC 5321 §4.5.3.1.3, plus a device
// tag).
const MaxLoginNameLength = 256

// CheckLoginName returns an *Error with Code CodeAuth when name cannot be
// a login name, and nil otherwise. Every way of naming a user (USER, the
// SASL mechanisms, the PLAIN authorization identity) is checked with it
// before anything else happens, so that one name always means one
// account: a server would read an octet refused here differently from
// the bytes popbridge keys its locks, records and limits on. Refused are:
//
//   - the empty name, and names over MaxLoginNameLength octets;
//   - invalid UTF-8;
//   - control characters (C0, DEL, C1): a C program such as Dovecot stops
//     at a NUL, and CR, LF and TAB break protocols and logs;
//   - Unicode format characters (zero-width space, byte order mark, bidi
//     controls) and spaces other than U+0020, which SASLprep (RFC 4013)
//     and other normalizations drop or map to a space;
//   - a space at either end, which some servers trim;
//   - the double quote and the backslash, IMAP's quoting characters,
//     which some servers unquote.
//
// Letter case is left alone: whether it matters is the upstream's choice.
func CheckLoginName(name string) error {
	switch {
	case name == "":
		return errLoginName("empty")
	case len(name) > MaxLoginNameLength:
		return errLoginName("longer than 256 octets")
	case !utf8.ValidString(name):
		return errLoginName("not valid UTF-8")
	case name[0] == ' ' || name[len(name)-1] == ' ':
		return errLoginName("spaces at either end are not allowed")
	}
	for _, r := range name {
		switch {
		case r == '"' || r == '\\':
			return errLoginName("quotes and backslashes are not allowed")
		case unicode.IsControl(r):
			return errLoginName("control characters are not allowed")
		case r != ' ' && unicode.IsSpace(r), unicode.In(r, unicode.Cf, unicode.Zs, unicode.Zl, unicode.Zp) && r != ' ':
			return errLoginName("invisible characters and spaces other than U+0020 are not allowed")
		}
	}
	return nil
}

func errLoginName(why string) *Error {
	return &Error{Code: CodeAuth, Text: "invalid user name: " + why}
}
