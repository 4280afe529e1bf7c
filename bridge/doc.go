// Package bridge is popbridge itself: a POP3 server (package pop3) whose
// maildrops live in an upstream IMAP mailbox (package upstream), with a
// per-client UIDL state map (package state).
//
// A POP3 login "alice@example.com#laptop" is passed through to the upstream
// as "alice@example.com"; "laptop" is the device tag that names the client.
// Every client of a mailbox sees the same UIDLs (the mailbox record); each
// client has its own record of hidden messages and pending deletions.
//
// A site that moves clients from another POP3 server can carry that
// server's UIDLs over (ImportUIDLs, popbridge import-uidl): a message
// matched with certainty gets the old UIDL in the mailbox record, in place
// of a UIDL of popbridge's that no client has been served yet (a UIDL
// already in the record counts as served, and is replaced only with
// -force, at the operator's word).
//
// # Invariants
//
// Every change must keep these; each one has a test.
//
//  1. No message is deleted, moved or flagged upstream unless this client sent
//     DELE for it and then QUIT in the TRANSACTION state. (The one exception
//     is the operator's upstream.mark_seen_on_retr, which sets \Seen after a
//     RETR.)
//  2. Never a bare EXPUNGE or CLOSE: only UID EXPUNGE of our own UIDs
//     (UIDPLUS or IMAP4rev2), or UID MOVE. Without them the expunge policy
//     fails with a clear error; it never widens.
//  3. A UIDL, once issued for a message, stays that message's UIDL across
//     sessions, restarts, instances and UIDVALIDITY changes, and is never
//     reused for another message. Nor is it carried over a UIDVALIDITY
//     change to a message it may not belong to: where messages share a
//     fingerprint (Message-ID, INTERNALDATE, size), popbridge keeps a
//     SHA-256 of their content, taken when the tie is first seen, and a UIDL
//     goes over only when fingerprint and digest name one stored message and
//     one message now; a message it cannot tell apart gets a new UIDL (the
//     client downloads it again, which loses nothing). The same holds for a
//     message whose fingerprint the background completion (complete.go) has
//     not stored yet: the first listing of a large mailbox takes only UID
//     and RFC822.SIZE, and a UIDVALIDITY change before the completion ends
//     gives such a message a new UIDL, never another's.
//     The state records are keyed on
//     upstream.name, the account (through accountKey, the one function
//     every key is built with) and the mailbox, never on upstream.address:
//     writing the address another way, or moving the account to another
//     server (recognised by its UIDVALIDITY, its messages re-matched by
//     fingerprint), keeps the UIDLs and every device's hidden messages.
//     Records of versions that keyed on the address are adopted, once, at
//     the account's first login.
//     In a merged maildrop the login's own mailbox keeps its UIDLs; another
//     source's are "s<number>-" and its own, the number stored when the
//     source was first seen and never given to another source.
//  4. LIST and STAT sizes are the octets RETR sends (CRLF line ends, before
//     dot-stuffing); where the upstream's RFC822.SIZE was wrong, the size
//     measured by the first RETR is stored and used from then on. Where the
//     provider profile says RFC822.SIZE is wrong (Exchange), or a RETR found
//     it wrong for the mailbox, every message new to the record is measured
//     (BODY.PEEK[] streamed through the POP3 framing into a counter) before
//     its first LIST, once, and the measured size is stored.
//  5. A RETR whose upstream fails midway ends the connection without the
//     terminating dot: the client never stores a truncated message.
//  6. Secrets (passwords, tokens, SASL payloads) never reach logs, metrics or
//     error texts.
//  7. One session per (mailbox, client) at a time, across all instances that
//     share a store. A merged maildrop ([[maildrops]], merged.go) is one
//     session under the lock of the login's own (mailbox, client); the
//     client records of its other sources are its own.
//  8. At QUIT the intent (policy, UIDLs and the fingerprint and digest of
//     each message) is written to the store before the upstream is touched,
//     and cleared only after the upstream confirmed it. An intent left by a
//     crash or a temporary failure is retried at that client's next logins,
//     and never fails them: the login is served whatever the replay does.
//     After 10 failed attempts, or 7 days, it is dropped with a log line.
//     Until the upstream confirmed it, its messages stay listed, under every
//     policy (nothing is hidden or removed that the upstream did not do).
//     A replay acts only on messages whose identity is certain: after a
//     UIDVALIDITY change, one whose fingerprint, or, where fingerprints tie,
//     digest, is not the one recorded at QUIT is skipped and logged.
//  9. POP3 message numbers are fixed at login for the whole session.
//  10. One login name is one account. A name the upstream could read
//     differently from its octets (control characters such as NUL, invalid
//     UTF-8, invisible characters, spaces at either end, quotes) is refused
//     by pop3.CheckLoginName, on every login path, before the limiter, the
//     lock and the upstream hear of it. Every key popbridge keeps for an
//     account (the mailbox record and the maildrop locks, the counts of
//     failed logins and of sessions) derives from Bridge.accountKey, which
//     folds case only as auth.fold_case says the upstream does.
//  11. The limits hold under concurrency: a login in progress counts as a
//     failure until it succeeds, so at most the limit are outstanding or
//     failed in the window however many arrive at once; an account has at
//     most limits.max_sessions_per_account sessions on an instance, counted
//     before its upstream login and its lock; the AUTHORIZATION state lasts
//     at most server.auth_timeout in all.
//  12. Memory read ahead is bounded for the process, not only per session:
//     when the shared budget is spent, sessions retrieve without it.
//  13. The UPDATEs of one upstream mailbox reach the upstream one at a time,
//     across its devices and across the instances that share a store (the
//     store's update lock), and the move policy moves only what is still in
//     the mailbox then: a message ends up in the destination once, even
//     when two devices delete it at the same moment. Without MOVE, what
//     each COPY copied is recorded in the stored intent before the
//     \Deleted + UID EXPUNGE, and a retry does not copy it again.
//  14. popbridge does not start on a state file that lost its contents: an
//     existing empty (0-byte) file is refused, with the way out, unless the
//     operator asks for it to be initialised (serve -init-state,
//     state.init_empty).
//  15. An UPDATE the upstream refuses leaves the upstream as it was: the
//     \Deleted popbridge set for a UID EXPUNGE that failed is taken back
//     (a \Deleted that was there before stays), and the intent is dropped at
//     once when the refusal is for good. QUIT tells the client what
//     happened (RFC 3206): [SYS/PERM] with "permission denied" for a
//     missing right (NO [NOPERM], or a NO whose text says so), [SYS/PERM]
//     with "over quota" for a full target (NO [OVERQUOTA]), [SYS/TEMP] when
//     the server is down or busy or the connection broke (the intent stays
//     for the next login).
//  16. The move policy always has a destination: delete.move_to, the \Trash
//     special-use mailbox, a mailbox with the profile's or a usual Trash name,
//     or "Trash", which popbridge creates (and only then: at a QUIT that
//     deletes, never at check or login; creating a mailbox changes no
//     message). The flag policy sets only keywords the mailbox's
//     PERMANENTFLAGS allow, \Seen in their place when none is left, never
//     \Deleted; the device no longer lists the messages either way.
//  17. An account holds at most upstream.max_connections_per_account upstream
//     connections on an instance (the profile's by default: Gmail 15,
//     Microsoft 20); a login beyond it waits briefly, then is refused with
//     [SYS/TEMP] before the upstream hears of it. The background completion
//     of fingerprints (complete.go) counts in it, and takes a place only
//     when one is free: it never makes a login wait. After a throttling answer
//     the account's logins are refused with [LOGIN-DELAY], without reaching
//     the upstream, until its back-off window has passed. Each upstream
//     ([upstream], each [[upstreams]] entry) has its own provider state
//     (provider.go): its profile, budget and back-off windows, which a
//     login's target carries to the maildrop; an enrolled account counts
//     as its upstream identity.
//  18. Provider differences are data (profile.go), chosen by upstream.profile
//     (an [[upstreams]] entry's profile, by default its preset's) or
//     recognized by host name, capabilities and ID, never tests of the
//     provider spread through the code.
//  19. A login name enrolled in the account registry is served only as
//     enrolled (never passed through), and its app password is checked by
//     popbridge before anything else: a wrong one reaches neither the
//     upstream nor the OAuth provider. The upstream login uses a token of
//     the account's grant, refreshed once across every instance, the
//     rotated refresh token stored before the new access token is used; a
//     grant the provider no longer honours gives -ERR [AUTH] and marks the
//     account (enrolled.go).
//  20. A warm upstream connection (warm.go) serves only the upstream,
//     account and mailbox it was opened for, and only a login whose
//     password's HMAC (an in-memory key drawn at start) equals the one it
//     logged in with; any other password logs in upstream. It is in one
//     session or in the pool, never both, and is parked only after a
//     session that ended without an upstream error (its UPDATE applied).
//     Taking it SELECTs the mailbox again; a failure, a BYE or a changed
//     UIDVALIDITY closes it, never reused. It keeps its place in the
//     account's connection budget (17), and is closed at its TTL and at
//     shutdown (LOGOUT). Enrolled accounts get none.
package bridge
