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
//	    "lastlogin"           time (below) of the client's last login, if any
//	accounts                  bucket
//	  <account name bytes>    one account record (below)
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
// uvarint count then that many Digests strings, uvarint count then that many
// Copied strings.
//
// Format 1 had the same layout without the fields format 2 added at the end
// of a value (an entry's Digest; a pending value's Attempts, Fingerprints,
// Digests and Copied): a format-1 value decodes as one whose new fields are
// empty. Open reads a format-1 file and marks it format 2; a popbridge that
// knows only format 1 then refuses the file rather than misread it.
//
// A client record with nothing hidden, no pending UPDATE and no last login
// is deleted, so LoadClient reports it as unknown again.
//
// A "lastlogin" value is one time (as in an account value below), to the
// microsecond. It came after format 2 was first written, as an optional key
// of the client bucket: a record without it has no last login, and earlier
// builds of format 2, which do not look at it, still read the file (so the
// format number stays 2).
//
// An account value is: the byte 1 (its layout), version uvarint, Kind,
// Upstream, Provider, Identity and Mailbox strings, uvarint count then that
// many passwords (Label string, Hash string, WrappedDEK string, Created
// time, LastUsed time), DEKVersion uvarint, ServerWrappedDEK string,
// SealedGrant string, GrantVersion uvarint, GrantExpiry time, GrantUpdated
// time, GrantStatus string, GrantReason string, GrantSince time, Created
// time, Updated time. A time is uvarint 0 for the zero time, else uvarint 1,
// varint Unix seconds and uvarint nanoseconds, read back in UTC. Secrets are
// in it only sealed or wrapped by bridge/account. The "accounts" bucket came
// after format 1 was first written: Open adds it to a file without it, and
// earlier builds, which do not look at it, still open such a file.
//
// Open creates the top-level buckets and "format" in a new file, and
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
// atomic; PutAccount's version check works the same way. Maildrop locks,
// update locks (LockUpdate, one per mailbox name, which waits) and grant locks
// live in memory, in the Store; as no other process can open the file, that
// is enough to make them exclusive for every session that shares the store.
// A grant lock is a one-token channel per account name that LockGrant waits
// on (until its context ends or the Store is closed).
//
// RenameMailbox copies the mailbox's bucket and the buckets of its clients to
// their new keys and deletes the old ones, in one write transaction. It first
// checks in a read transaction, so that the common case (nothing to rename)
// does not write.
package boltstore
