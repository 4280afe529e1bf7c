package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/popbridge/popbridge/state"
)

// formatVersion is the layout this build writes; see the package
// documentation. It reads format 1 as well: every value of format 1 is a
// value of format 2 without the fields format 2 added at the end, and Open
// marks such a file as format 2.
const formatVersion = 2

// oldestFormat is the oldest layout this build reads.
const oldestFormat = 1

// Names of buckets and keys.
var (
	bucketMeta      = []byte("meta")
	keyFormat       = []byte("format")
	bucketMailboxes = []byte("mailboxes")
	bucketClients   = []byte("clients")
	keyMailboxMeta  = []byte("meta")
	bucketUID       = []byte("uid")
	bucketHidden    = []byte("hidden")
	keyPending      = []byte("pending")
	keyLastLogin    = []byte("lastlogin")
)

// errShort reports a value that ends before its fields do.
var errShort = errors.New("truncated")

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// mailboxKey is the key of mailbox's bucket in "mailboxes".
func mailboxKey(mailbox string) []byte {
	return appendString(make([]byte, 0, binary.MaxVarintLen64+len(mailbox)), mailbox)
}

// clientKey is the key of k's bucket in "clients".
func clientKey(k state.ClientKey) []byte {
	b := make([]byte, 0, 2*binary.MaxVarintLen64+len(k.Mailbox)+len(k.Client))
	return appendString(appendString(b, k.Mailbox), k.Client)
}

func uidKey(uid uint32) [4]byte {
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], uid)
	return k
}

// mailboxMeta is the "meta" value of a mailbox bucket.
type mailboxMeta struct {
	version uint64
	markers state.Markers
	count   uint32 // keys in the "uid" bucket
}

const mailboxMetaLen = 8 + 4 + 4 + 4 + 8 + 4

func (m *mailboxMeta) encode() []byte {
	b := make([]byte, 0, mailboxMetaLen)
	b = binary.BigEndian.AppendUint64(b, m.version)
	b = binary.BigEndian.AppendUint32(b, m.markers.UIDValidity)
	b = binary.BigEndian.AppendUint32(b, m.markers.UIDNext)
	b = binary.BigEndian.AppendUint32(b, m.markers.NumMessages)
	b = binary.BigEndian.AppendUint64(b, m.markers.HighestModSeq)
	return binary.BigEndian.AppendUint32(b, m.count)
}

func decodeMailboxMeta(b []byte) (mailboxMeta, error) {
	if len(b) != mailboxMetaLen {
		return mailboxMeta{}, fmt.Errorf("mailbox meta is %d bytes, want %d", len(b), mailboxMetaLen)
	}
	return mailboxMeta{
		version: binary.BigEndian.Uint64(b[0:]),
		markers: state.Markers{
			UIDValidity:   binary.BigEndian.Uint32(b[8:]),
			UIDNext:       binary.BigEndian.Uint32(b[12:]),
			NumMessages:   binary.BigEndian.Uint32(b[16:]),
			HighestModSeq: binary.BigEndian.Uint64(b[20:]),
		},
		count: binary.BigEndian.Uint32(b[28:]),
	}, nil
}

// maxEntryLen is the most bytes appendEntry appends for e.
func maxEntryLen(e *state.Entry) int {
	return 4*binary.MaxVarintLen64 + len(e.UIDL) + len(e.Fingerprint) + len(e.Digest)
}

// appendEntry appends the value of e's key in a "uid" bucket. The Digest
// (format 2) is left out when empty, as it is for almost every message.
func appendEntry(b []byte, e *state.Entry) []byte {
	b = binary.AppendVarint(b, e.Size)
	b = appendString(b, e.UIDL)
	b = appendString(b, e.Fingerprint)
	if e.Digest != "" {
		b = appendString(b, e.Digest)
	}
	return b
}

// decoder reads the fields of one value. The first error sticks; later reads
// return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 4 {
		d.fail(errShort)
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

// bytes returns the bytes of a string field, still pointing into the value.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) string() string { return string(d.bytes()) }

// count reads a list length and checks that the rest of the value can hold
// that many items of at least itemLen bytes each, so a bad count cannot make
// the caller allocate more than the value's size.
func (d *decoder) count(itemLen int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/itemLen) {
		d.fail(fmt.Errorf("count %d exceeds the %d bytes left", n, len(d.b)))
		return 0
	}
	return int(n)
}

// end returns the first error, or one for bytes left over.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes of trailing garbage", len(d.b))
	}
	return d.err
}

// decodeEntry decodes the value of uid's key in a "uid" bucket.
func decodeEntry(uid uint32, v []byte) (state.Entry, error) {
	d := decoder{b: v}
	e := state.Entry{UID: uid}
	e.Size = d.varint()
	e.UIDL = d.string()
	e.Fingerprint = d.string()
	if d.err == nil && len(d.b) > 0 {
		if e.Digest = d.string(); d.err == nil && e.Digest == "" {
			d.fail(errors.New("empty digest stored"))
		}
	}
	return e, d.end()
}

func encodePending(p *state.Pending) []byte {
	b := make([]byte, 0, 64+len(p.Target)+8*len(p.UIDs)+20*len(p.UIDLs))
	b = appendString(b, p.Policy)
	b = appendString(b, p.Target)
	b = binary.AppendUvarint(b, uint64(len(p.Flags)))
	for _, f := range p.Flags {
		b = appendString(b, f)
	}
	b = binary.BigEndian.AppendUint32(b, p.UIDValidity)
	b = binary.AppendUvarint(b, uint64(len(p.UIDs)))
	for _, uid := range p.UIDs {
		b = binary.AppendUvarint(b, uint64(uid))
	}
	b = binary.AppendUvarint(b, uint64(len(p.UIDLs)))
	for _, u := range p.UIDLs {
		b = appendString(b, u)
	}
	b = binary.AppendVarint(b, p.Created.Unix())
	b = binary.AppendUvarint(b, uint64(p.Created.Nanosecond()))
	// Format 2.
	b = binary.AppendUvarint(b, uint64(p.Attempts))
	b = appendStrings(b, p.Fingerprints)
	b = appendStrings(b, p.Digests)
	return appendStrings(b, p.Copied)
}

// appendStrings appends a uvarint count and that many strings.
func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// strings reads what appendStrings wrote; nil for a count of 0.
func (d *decoder) strings() []string {
	n := d.count(1)
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = d.string()
	}
	return ss
}

// encodeLastLogin is the "lastlogin" value of a client bucket: t to the
// microsecond, as a time (see appendTime).
func encodeLastLogin(t time.Time) []byte {
	return appendTime(nil, t.Truncate(time.Microsecond))
}

func decodeLastLogin(v []byte) (time.Time, error) {
	d := decoder{b: v}
	t := d.time()
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("%d bytes after the time", len(d.b)))
	}
	return t, d.err
}

func decodePending(v []byte) (*state.Pending, error) {
	d := decoder{b: v}
	p := &state.Pending{}
	p.Policy = d.string()
	p.Target = d.string()
	if n := d.count(1); n > 0 {
		p.Flags = make([]string, n)
		for i := range p.Flags {
			p.Flags[i] = d.string()
		}
	}
	p.UIDValidity = d.u32()
	if n := d.count(1); n > 0 {
		p.UIDs = make([]uint32, n)
		for i := range p.UIDs {
			uid := d.uvarint()
			if uid > math.MaxUint32 {
				d.fail(fmt.Errorf("UID %d out of range", uid))
			}
			p.UIDs[i] = uint32(uid)
		}
	}
	if n := d.count(1); n > 0 {
		p.UIDLs = make([]string, n)
		for i := range p.UIDLs {
			p.UIDLs[i] = d.string()
		}
	}
	sec := d.varint()
	nsec := d.uvarint()
	if nsec >= uint64(time.Second) {
		d.fail(fmt.Errorf("nanoseconds %d out of range", nsec))
	}
	if d.err == nil && len(d.b) > 0 {
		// Format 2; a value of format 1 ends here.
		attempts := d.uvarint()
		if attempts > math.MaxInt32 {
			d.fail(fmt.Errorf("attempts %d out of range", attempts))
		}
		p.Attempts = int(attempts)
		p.Fingerprints = d.strings()
		p.Digests = d.strings()
		p.Copied = d.strings()
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	p.Created = time.Unix(sec, int64(nsec)).UTC()
	return p, nil
}
