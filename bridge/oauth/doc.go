// Package oauth is popbridge's OAuth 2.0 client for enrolled accounts:
// accounts of OAuth-only providers (Microsoft 365, Outlook.com, Gmail)
// whose POP3 clients log in to popbridge with an app password while
// popbridge logs in upstream with XOAUTH2 or OAUTHBEARER and a token it
// keeps fresh.
//
//   - Config is the TOML table (provider preset, tenant, client ID, where
//     the client secret is) and NewClient its validated, ready form.
//   - Enrollment flows: the device authorization grant (StartDevice,
//     DeviceFlow), the authorization code grant with PKCE, either with a
//     loopback listener (AuthCodeLoopback) or with the redirected address
//     pasted back (AuthCodePaste, NewAuthRequest), and app-only access with
//     client credentials (AppToken).
//   - Keeper keeps an enrolled grant fresh through a GrantStore: refreshes
//     happen under the store's cross-instance lock and are saved before
//     the new access token is used; AppKeeper caches app-only tokens.
//   - IMAPLogin.Authenticate logs an upstream.Conn in, with one forced
//     refresh when the server refuses the token.
//
// Errors are *Error values matching ErrReconsent (the grant is gone: the
// account must be enrolled again), ErrInvalidClient, ErrAccessDenied,
// ErrExpired, ErrStateMismatch or ErrTemporary with errors.Is.
package oauth
