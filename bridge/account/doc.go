// Package account is the registry of enrolled accounts: POP3 logins that
// popbridge checks itself, against app passwords it issued, and serves from
// an upstream it logs in to with OAuth 2.0 (XOAUTH2 or OAUTHBEARER) and a
// grant it keeps.
//
// An account is stored as a state.Account in a state.AccountStore (bbolt or
// PostgreSQL). Its secrets are kept so that a copy of the state reveals no
// usable token:
//
//   - each account has a random 256-bit data key (DEK); the grant (access
//     and refresh token) is sealed under it with AES-256-GCM, a fresh nonce
//     per seal, and associated data that binds the account name, kind,
//     upstream, provider, identity, mailbox, the DEK's version and the
//     grant's version;
//   - each app password is stored as an argon2id hash (PHC string) to check
//     logins, and wraps the DEK under a key derived from it with argon2id
//     and a salt of its own; so only a login with a right app password can
//     open the grant;
//   - optionally, the server key (accounts.server_key_file) wraps the DEK
//     too, which lets popbridge open the grant with no client logged in.
//
// docs/accounts.md describes the design, what an attacker with which copy
// can do, and rotation and revocation.
//
// The login path calls Verify with the login name (device tag stripped)
// and password: ErrNotEnrolled means the login is not an enrolled account
// (pass it through as before), ErrBadPassword a wrong app password (no
// upstream contact). The Session it returns opens the grant (Grant) and
// refreshes it once across all instances (UpdateGrant). The CLI adds
// (Add), lists (List), removes (Remove) accounts, and adds (AddPassword,
// Session.AddPassword), replaces (Session.SetPassword) and revokes
// (RevokePassword) app passwords.
package account
