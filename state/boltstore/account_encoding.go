package boltstore

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/popbridge/popbridge/state"
)

// bucketAccounts holds one value per account record, keyed by its name.
var bucketAccounts = []byte("accounts")

// accountV1 is the first byte of an account value in this layout.
const accountV1 = 1

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// appendTime appends t as uvarint 0 for the zero time, else uvarint 1,
// varint Unix seconds and uvarint nanoseconds.
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	b = append(b, 1)
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func (d *decoder) time() time.Time {
	switch flag := d.uvarint(); {
	case d.err != nil:
		return time.Time{}
	case flag == 0:
		return time.Time{}
	case flag != 1:
		d.fail(fmt.Errorf("time flag %d", flag))
		return time.Time{}
	}
	sec := d.varint()
	nsec := d.uvarint()
	if nsec >= uint64(time.Second) {
		d.fail(fmt.Errorf("nanoseconds %d out of range", nsec))
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// blob returns a copy of a byte-string field, nil when empty: bbolt's
// values are valid only during the transaction.
func (d *decoder) blob() []byte {
	b := d.bytes()
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// encodeAccount is the value of a's key in "accounts", with version stored
// as its version.
func encodeAccount(a *state.Account, version uint64) []byte {
	n := 128 + len(a.Kind) + len(a.Upstream) + len(a.Provider) + len(a.Identity) + len(a.Mailbox) +
		len(a.ServerWrappedDEK) + len(a.SealedGrant) + len(a.GrantStatus) + len(a.GrantReason)
	for _, p := range a.Passwords {
		n += 64 + len(p.Label) + len(p.Hash) + len(p.WrappedDEK)
	}
	b := make([]byte, 0, n)
	b = append(b, accountV1)
	b = binary.AppendUvarint(b, version)
	b = appendString(b, a.Kind)
	b = appendString(b, a.Upstream)
	b = appendString(b, a.Provider)
	b = appendString(b, a.Identity)
	b = appendString(b, a.Mailbox)
	b = binary.AppendUvarint(b, uint64(len(a.Passwords)))
	for _, p := range a.Passwords {
		b = appendString(b, p.Label)
		b = appendString(b, p.Hash)
		b = appendBytes(b, p.WrappedDEK)
		b = appendTime(b, p.Created)
		b = appendTime(b, p.LastUsed)
	}
	b = binary.AppendUvarint(b, a.DEKVersion)
	b = appendBytes(b, a.ServerWrappedDEK)
	b = appendBytes(b, a.SealedGrant)
	b = binary.AppendUvarint(b, a.GrantVersion)
	b = appendTime(b, a.GrantExpiry)
	b = appendTime(b, a.GrantUpdated)
	b = appendString(b, a.GrantStatus)
	b = appendString(b, a.GrantReason)
	b = appendTime(b, a.GrantSince)
	b = appendTime(b, a.Created)
	return appendTime(b, a.Updated)
}

// accountVersion reads only the version of an account value.
func accountVersion(v []byte) (uint64, error) {
	if len(v) < 1 || v[0] != accountV1 {
		return 0, fmt.Errorf("unknown account layout")
	}
	d := decoder{b: v[1:]}
	version := d.uvarint()
	return version, d.err
}

func decodeAccount(name string, v []byte) (*state.Account, error) {
	if len(v) < 1 || v[0] != accountV1 {
		return nil, fmt.Errorf("unknown account layout")
	}
	d := decoder{b: v[1:]}
	a := &state.Account{Name: name}
	a.Version = d.uvarint()
	a.Kind = d.string()
	a.Upstream = d.string()
	a.Provider = d.string()
	a.Identity = d.string()
	a.Mailbox = d.string()
	// A password takes at least 7 bytes: three empty strings, two times.
	if n := d.count(7); n > 0 {
		a.Passwords = make([]state.AppPassword, n)
		for i := range a.Passwords {
			p := &a.Passwords[i]
			p.Label = d.string()
			p.Hash = d.string()
			p.WrappedDEK = d.blob()
			p.Created = d.time()
			p.LastUsed = d.time()
		}
	}
	a.DEKVersion = d.uvarint()
	a.ServerWrappedDEK = d.blob()
	a.SealedGrant = d.blob()
	a.GrantVersion = d.uvarint()
	a.GrantExpiry = d.time()
	a.GrantUpdated = d.time()
	a.GrantStatus = d.string()
	a.GrantReason = d.string()
	a.GrantSince = d.time()
	a.Created = d.time()
	a.Updated = d.time()
	if err := d.end(); err != nil {
		return nil, err
	}
	if a.Version == 0 {
		return nil, fmt.Errorf("version 0")
	}
	return a, nil
}
