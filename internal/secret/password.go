package secret

import (
	"crypto/rand"
	"strings"
)

// PasswordAlphabet holds the 32 characters of generated passwords: digits
// and lower-case letters without 0, 1, l and o, which are easily taken for
// one another. 32 symbols carry 5 bits each.
const PasswordAlphabet = "23456789abcdefghijkmnpqrstuvwxyz"

// Generated passwords are PasswordGroups groups of PasswordGroupLen
// characters joined by '-': 4 × 5 × 5 = 100 bits.
const (
	PasswordGroups   = 4
	PasswordGroupLen = 5
	PasswordBits     = PasswordGroups * PasswordGroupLen * 5
)

// GeneratePassword returns a new random password such as
// "k7m2x-q9dpa-3hv8e-wnt4c" (PasswordBits bits, from crypto/rand).
func GeneratePassword() string {
	const n = PasswordGroups * PasswordGroupLen
	var raw [n]byte
	rand.Read(raw[:])
	var b strings.Builder
	b.Grow(n + PasswordGroups - 1)
	for i, r := range raw {
		if i > 0 && i%PasswordGroupLen == 0 {
			b.WriteByte('-')
		}
		// 256 is a multiple of 32: every symbol is equally likely.
		b.WriteByte(PasswordAlphabet[r%32])
	}
	Zero(raw[:])
	return b.String()
}

// NormalizePassword returns the form of s that is hashed and checked. A
// string shaped like a generated password, whatever its letter case and
// with or without the dashes (or with spaces instead), becomes the lower-case
// dashed form, so that "K7M2X Q9DPA 3HV8E WNT4C" typed into a client works;
// every other string is returned unchanged. Apply it both when hashing and
// when checking.
func NormalizePassword(s string) string {
	const n = PasswordGroups * PasswordGroupLen
	if len(s) < n || len(s) > n+PasswordGroups-1 {
		return s
	}
	var b [n]byte
	k := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		switch {
		case strings.IndexByte(PasswordAlphabet, c) >= 0:
			if k == n {
				return s
			}
			b[k] = c
			k++
		case (c == '-' || c == ' ') && k > 0 && k%PasswordGroupLen == 0 && i > 0 && s[i-1] != '-' && s[i-1] != ' ' && k < n:
			// a separator between two groups
		default:
			return s
		}
	}
	if k != n {
		return s
	}
	var out strings.Builder
	out.Grow(n + PasswordGroups - 1)
	for i := range b {
		if i > 0 && i%PasswordGroupLen == 0 {
			out.WriteByte('-')
		}
		out.WriteByte(b[i])
	}
	return out.String()
}
