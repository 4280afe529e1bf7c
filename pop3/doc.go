// Package pop3 is a POP3 server: the protocol only. It knows nothing of
// IMAP or of the state store; a Backend authenticates users and opens their
// Maildrops.
//
// It follows:
//
//   - RFC 1939, POP3: the AUTHORIZATION, TRANSACTION and UPDATE states,
//     USER, PASS, QUIT, STAT, LIST, RETR, DELE, NOOP, RSET, TOP and UIDL,
//     dot-stuffing, and the autologout timer of at least 10 minutes.
//   - RFC 2449, the extension mechanism: CAPA, response codes, PIPELINING,
//     and the 255-octet command line (with some slack, MaxLineLength).
//   - RFC 2595 §4, STLS.
//   - RFC 3206, the SYS and AUTH response codes (AUTH-RESP-CODE).
//   - RFC 5034, SASL AUTH, with the PLAIN (RFC 4616) and LOGIN mechanisms,
//     and, when the Backend is a TokenBackend, OAUTHBEARER (RFC 7628) and
//     XOAUTH2. An AUTH line with an initial response, and each SASL
//     response, may be up to 16 KiB (OAuth tokens); other lines keep
//     MaxLineLength.
//   - RFC 8314, implicit TLS: Serve a tls.NewListener, or ServeConn a
//     *tls.Conn.
//
// APOP, UTF8 and LANG (RFC 6856) are not offered.
//
// Abuse control is the caller's policy, plugged in through two hooks: a
// ConnLimiter admits or refuses each connection before the greeting
// ("-ERR [SYS/TEMP]" and a close), a LoginLimiter may refuse a login
// attempt before the Backend sees it and sets the pause after a failure.
// The server itself closes a connection after MaxErrors protocol errors
// and failed logins, and at once when the very first line is not a POP3
// command (cross-protocol attacks). Before login every read waits at most
// AuthTimeout; after it, ReadTimeout (RFC 1939's autologout). Behind the
// PROXY protocol the client's address is learnt on the connection's own
// goroutine, so a slow proxy holds up no other connection.
//
// # Invariants
//
//  1. Maildrop.Commit is called only for QUIT in the TRANSACTION state, once,
//     with exactly the messages marked by DELE and not unmarked by RSET.
//     DELE and RSET change only marks held here. A session that ends any
//     other way (dropped connection, timeout, too many errors, Shutdown,
//     panic) deletes nothing.
//  2. After a successful login, Maildrop.Close is called exactly once, in
//     every path, after Commit if there was one.
//  3. Message numbers are fixed at login: message n is Maildrop.List()[n-1]
//     for the whole session. A message marked deleted is absent from STAT,
//     LIST and UIDL, and RETR, TOP, DELE, LIST n and UIDL n of it fail.
//  4. A RETR or TOP that fails after sending part of a message closes the
//     connection without the terminating dot, so the client never stores a
//     truncated message as complete.
//  5. Passwords, tokens and SASL responses are never logged, and never put
//     into a response or an error. Backend errors other than *Error are logged and
//     answered with a fixed "-ERR [SYS/TEMP]" text.
//  6. Credentials are accepted only over TLS unless AllowInsecureAuth is
//     set. Input sent before the STLS handshake is discarded (RFC 2595 §4).
//  7. Every read and write has a deadline, every line a length limit.
//
// Commit runs with a context that Close, Shutdown and a dropped connection
// do not cancel, bounded by CommitTimeout; Shutdown waits for it.
package pop3
