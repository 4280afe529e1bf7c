// Package boltstore is the embedded state.Store: one bbolt file, held by one
// popbridge process at a time.
//
// # Layout on disk (format 2)
//
// Integers written as "u32" and "u64" are fixed-size big-endian; "uvarint" and
// "varint" are encoding/binary's unsigned and zig-zag signed varints; a
// "string" is a uvarint byte length followed by that many bytes, taken as is
// (names and UIDLs need not be UTF-8).
//
// Top-level buckets:
//
//	meta                      bucket
//	  "format"                u32: the format version, 2
//	mailboxes                 bucket
//	  <mailbox key>           bucket, one per mailbox record
//	    "meta"                version u64, UIDVALIDITY u32, UIDNEXT u32,
//	                          message count u32, HIGHESTMODSEQ u64,
//	                          entry count u32 (32 bytes)
//	    "uid"                 bucket
//	      <UID u32>           Size varint, UIDL string, Fingerprint string,
//	                          and Digest string only when not empty
//	clients                   bucket
//	  <client key>            bucket, one per client record
//	    "hidden"              bucket
//	      <UIDL bytes>        empty value: this client hid that UIDL
//	    "pending"             the outstanding UPDATE, if any (below)
//
// A mailbox key is the mailbox name as a string (so "" is a name like any
// other); a client key is the mailbox name as a string followed by the client
// tag as a string, so no two (mailbox, client) pairs share a key whatever
// bytes they hold, and the clients of one mailbox sort together. Keys are at
// most 32768 bytes (bbolt's limit), which bounds names a little below that.
//
// The entry count in a mailbox's "meta" is the number of keys in its "uid"
// bucket; LoadMailbox sizes its slice with it. Because UID keys are
// big-endian, a cursor walks them in ascending UID order.
//
// A "pending" value is: Policy string, Target string, uvarint count then that
// many Flags strings, UIDValidity u32, uvarint count then that many UIDs as
// uvarints, uvarint count then that many UIDLs strings, Created as varint Unix
// seconds then uvarint nanoseconds (0 to 999,999,999), read back in UTC;
// then Attempts uvarint, uvarint count then that many Fingerprints strings,
// uvarint count then that many Digests strings.
//
// Format 1 had the same layout without the fields format 2 added at the end
// of a value (an entry's Digest; a pending value's Attempts, Fingerprints and
// Digests): a format-1 value decodes as one whose new fields are empty. Open
// reads a format-1 file and marks it format 2; a popbridge that knows only
// format 1 then refuses the file rather than misread it.
//
// A client record with nothing hidden and no pending UPDATE is deleted, so
// LoadClient reports it as unknown again.
//
// Open creates the three top-level buckets and "format" in a new file, and
// refuses a file whose format it does not know, or that holds other buckets
// and no "format": a later format bumps the number and migrates older files in
// Open (for format 1, by changing the number). Every value is checked while
// it is decoded, and a bad one is reported as an error naming what is
// wrong, never as a panic.
//
// # Concurrency
//
// bbolt takes an exclusive flock on the file, so a second Open of the same
// path, from this process or another, fails after Options.Timeout (one second
// by default) with an error naming the path. Within the process, bbolt runs
// one write transaction at a time: ApplyMailbox reads the version and writes
// the change in one transaction, which is what makes the version check
// atomic. Maildrop locks live in memory, in the Store; as no other process
// can open the file, that is enough to make them exclusive for every session
// that shares the store.
package boltstore
