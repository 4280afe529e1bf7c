// Command fakeoauth runs a fake OAuth 2.0 provider and an OAuth-only IMAP
// server seeded with sample mail, for walk-throughs and scripts. It is a
// test tool: everything is in memory, on loopback, in cleartext.
//
//	go run ./internal/oauthtest/cmd/fakeoauth -provider-listen 127.0.0.1:8080 -imap-listen 127.0.0.1:1143 -auto-approve
//
// It prints the endpoints, a configuration snippet and the script
// endpoints (approve, deny, revoke, expire, stats), and stops on SIGINT or
// SIGTERM.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/popbridge/popbridge/internal/oauthtest"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	if err := run(os.Args[1:], os.Stdout, stop); err != nil {
		fmt.Fprintln(os.Stderr, "fakeoauth:", err)
		os.Exit(1)
	}
}

// run serves until stop delivers.
func run(args []string, out io.Writer, stop <-chan os.Signal) error {
	fs := flag.NewFlagSet("fakeoauth", flag.ContinueOnError)
	providerAddr := fs.String("provider-listen", "127.0.0.1:0", "address of the OAuth provider (HTTP)")
	imapAddr := fs.String("imap-listen", "127.0.0.1:0", "address of the OAuth-only IMAP server (cleartext)")
	autoApprove := fs.Bool("auto-approve", false, "approve every device code and browser sign-in for -user at once")
	user := fs.String("user", oauthtest.User, "the user -auto-approve signs in as")
	messages := fs.Int("messages", 3, "sample messages in each mailbox's INBOX")
	lifetime := fs.Duration("access-token-lifetime", time.Hour, "lifetime of access tokens")
	rotation := fs.String("rotation", "grace", "refresh token rotation: never, strict or grace")
	grace := fs.Duration("grace", 0, "with -rotation grace: how long a rotated refresh token stays valid (0: until its successor is used)")
	offline := fs.Bool("require-offline-access", true, "issue refresh tokens only for the offline_access scope (as Microsoft)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rot, err := oauthtest.ParseRotation(*rotation)
	if err != nil {
		return err
	}
	opts := oauthtest.Options{
		AccessTokenLifetime:  *lifetime,
		Rotation:             rot,
		GracePeriod:          *grace,
		RequireOfflineAccess: *offline,
	}
	if *autoApprove {
		opts.AutoApprove = *user
	}
	env := oauthtest.NewEnv(opts)
	for _, m := range env.Provider.Mailboxes() {
		if _, err := env.Seed(m, *messages); err != nil {
			return err
		}
	}
	if err := env.Start(*providerAddr, *imapAddr); err != nil {
		return err
	}
	defer env.Close()
	printSetup(out, env, *autoApprove, *user)

	s := <-stop
	fmt.Fprintf(out, "fakeoauth: %v, stopping\n", s)
	return nil
}

func printSetup(out io.Writer, env *oauthtest.Env, autoApprove bool, user string) {
	p := env.Provider
	base := p.URL()
	fmt.Fprintf(out, `fakeoauth: OAuth provider on %s, OAuth-only IMAP on %s

Endpoints
  authorize    %s
  token        %s
  device code  %s
  verification %s%s

Clients
  %-20s public (device flow, auth code + PKCE)
  %-20s confidential, secret %q
  %-20s app-only (client credentials), secret %q, may open %s and %s

Users: %s, %s (%s has full access to the shared mailbox %s)
`,
		base, env.IMAP.Addr(),
		p.AuthURL(), p.TokenURL(), p.DeviceAuthURL(), base, oauthtest.PathDevice,
		oauthtest.PublicClientID,
		oauthtest.ConfidentialClientID, oauthtest.ConfidentialSecret,
		oauthtest.AppClientID, oauthtest.AppSecret, oauthtest.User, oauthtest.SharedMailbox,
		oauthtest.User, oauthtest.OtherUser, oauthtest.User, oauthtest.SharedMailbox)
	if autoApprove {
		fmt.Fprintf(out, "Auto-approve: on, as %s\n", user)
	}
	fmt.Fprintf(out, `
Configuration (the OAuth table of an enrolled account):

  provider = "generic"
  client_id = %q
  flow = "device"
  auth_url = %q
  token_url = %q
  device_auth_url = %q
  scopes = [%q, "offline_access"]
  mechanism = "XOAUTH2"
  upstream_address = %q
  upstream_security = "none"

For app-only access: client_id = %q, flow = "client_credentials",
client_secret_env = "FAKEOAUTH_APP_SECRET", scopes = [%q], after
  export FAKEOAUTH_APP_SECRET=%s

Script endpoints (POST, form-encoded):
  curl -s %s%s                                 # user codes waiting (GET)
  curl -s -d user_code=CODE -d user=%s %s%s
  curl -s -d user_code=CODE %s%s
  curl -s -d user=%s %s%s     # revoke every grant of the user
  curl -s -d user=%s %s%s     # expire the user's access tokens now
  curl -s %s%s                                   # counters (GET)
`,
		oauthtest.PublicClientID, p.AuthURL(), p.TokenURL(), p.DeviceAuthURL(),
		oauthtest.IMAPScope, env.IMAP.Addr(),
		oauthtest.AppClientID, oauthtest.AppScope, oauthtest.AppSecret,
		base, oauthtest.PathPending,
		oauthtest.User, base, oauthtest.PathApprove,
		base, oauthtest.PathDeny,
		oauthtest.User, base, oauthtest.PathRevoke,
		oauthtest.User, base, oauthtest.PathExpire,
		base, oauthtest.PathStats)
}
