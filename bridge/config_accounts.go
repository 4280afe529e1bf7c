package bridge

import (
	"fmt"
	"strings"
	"time"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/upstream"
)

// OAuthUpstreamConfig is one [[upstreams]] table: an upstream that enrolled
// accounts (bridge/account) are served from, logged in to with XOAUTH2 or
// OAUTHBEARER and a token popbridge keeps fresh. Several may be configured
// (a Microsoft 365 tenant and a Gmail domain, say), next to the
// pass-through [upstream].
type OAuthUpstreamConfig struct {
	// Name names the upstream in the state store and in enrolled
	// accounts (popbridge account add -upstream NAME): same rules as
	// upstream.name, unique, never changed once accounts use it.
	Name string `toml:"name"`
	// Provider is the preset: microsoft365, outlook, gmail or generic. It
	// fills address, security and the OAuth endpoints; the [oauth]
	// table's provider, when set, must agree.
	Provider string `toml:"provider"`
	// Address (host:port) and Security (tls, starttls, none) of the IMAP
	// server; default: oauth.upstream_address / upstream_security, else
	// the preset's.
	Address              string        `toml:"address"`
	Security             string        `toml:"security"`
	Mailbox              string        `toml:"mailbox"` // default INBOX
	Timeout              time.Duration `toml:"timeout"` // default 30s
	CAFile               string        `toml:"ca_file"`
	ServerName           string        `toml:"server_name"`
	InsecureSkipVerify   bool          `toml:"insecure_skip_verify"`
	AllowCleartextRemote bool          `toml:"allow_cleartext_remote"`
	// Profile names the provider profile of the entry's accounts, as
	// upstream.profile does; default: the preset's (gmail, microsoft365,
	// outlook), and for generic "auto" (recognized from the host name,
	// the capabilities and the ID answer).
	Profile string `toml:"profile"`
	// MaxConnectionsPerAccount is the entry's upstream connection budget
	// per account, as upstream.max_connections_per_account (0: the
	// profile's; -1: no limit); counted apart from [upstream]'s.
	MaxConnectionsPerAccount int `toml:"max_connections_per_account"`
	// OAuth is the [upstreams.oauth] table: client ID, tenant, where the
	// client secret is (a file or an environment variable, never here),
	// the flow, and for generic the endpoints and scopes.
	OAuth oauth.Config `toml:"oauth"`
}

// AccountsConfig is the [accounts] table: enrolled accounts.
type AccountsConfig struct {
	// ServerKeyFile holds the server key (popbridge account init-key),
	// which escrows every account's data key so that popbridge can open a
	// grant with no app password at hand (account test, passwd). Optional:
	// without it only a right app password opens a grant.
	ServerKeyFile string `toml:"server_key_file"`
	// Passthrough sends logins that are not enrolled to [upstream] with
	// the client's own password (the default). false, or an empty
	// upstream.address, refuses them with -ERR [AUTH]. An enrolled name
	// is always served as enrolled, whatever this says.
	Passthrough bool `toml:"passthrough"`
}

// resolvedUpstream is an [[upstreams]] entry with the defaults and the
// preset applied.
type resolvedUpstream struct {
	UpstreamConfig
	OAuth oauth.Config
	// PresetProfile: Profile is the preset's, the entry naming none.
	PresetProfile bool
}

// passthroughOn reports whether logins that are not enrolled go to
// [upstream].
func (c *Config) passthroughOn() bool {
	return c.Accounts.Passthrough && c.Upstream.Address != ""
}

// oauthUpstream returns the [[upstreams]] entry called name, resolved.
func (c *Config) oauthUpstream(name string) (resolvedUpstream, bool) {
	for _, u := range c.Upstreams {
		if u.Name == name {
			r, _ := u.resolve()
			return r, true
		}
	}
	return resolvedUpstream{}, false
}

// OAuthUpstream returns the OAuth configuration and the IMAP address of the
// [[upstreams]] entry called name, for the account commands.
func (c *Config) OAuthUpstream(name string) (oauth.Config, UpstreamConfig, bool) {
	r, ok := c.oauthUpstream(name)
	return r.OAuth, r.UpstreamConfig, ok
}

// UpstreamNames returns the names of the [[upstreams]] entries.
func (c *Config) UpstreamNames() []string {
	var out []string
	for _, u := range c.Upstreams {
		out = append(out, u.Name)
	}
	return out
}

// resolve applies the defaults and the preset, and lists what is wrong
// (keys relative to the entry).
func (u OAuthUpstreamConfig) resolve() (resolvedUpstream, []*problem) {
	var p problems
	oc := u.OAuth
	switch {
	case oc.Provider == "":
		oc.Provider = u.Provider
	case u.Provider != "" && !strings.EqualFold(oc.Provider, u.Provider):
		p.add("oauth.provider", "%q differs from provider %q", oc.Provider, u.Provider)
	}
	if u.Provider == "" && u.OAuth.Provider == "" {
		p.add("provider", "is required (%s)", strings.Join(oauth.PresetNames(), ", "))
	}
	// The address and security of the entry win over the [oauth] ones.
	if u.Address != "" {
		oc.UpstreamAddress = u.Address
	}
	if u.Security != "" {
		oc.UpstreamSecurity = u.Security
	}
	r := resolvedUpstream{OAuth: oc, UpstreamConfig: UpstreamConfig{
		Name: u.Name, Address: u.Address, Mailbox: u.Mailbox, Timeout: u.Timeout,
		CAFile: u.CAFile, ServerName: u.ServerName, InsecureSkipVerify: u.InsecureSkipVerify,
		AllowCleartextRemote: u.AllowCleartextRemote,
		Profile:              u.Profile, MaxConnectionsPerAccount: u.MaxConnectionsPerAccount,
	}}
	if r.Mailbox == "" {
		r.Mailbox = "INBOX"
	}
	if r.Timeout == 0 {
		r.Timeout = 30 * time.Second
	}
	if r.Profile == "" {
		r.Profile = ProfileAuto
		if profileNamed(strings.ToLower(oc.Provider)) != nil && !strings.EqualFold(oc.Provider, oauth.ProviderGeneric) {
			r.Profile, r.PresetProfile = strings.ToLower(oc.Provider), true
		}
	}
	if err := validProfile(r.Profile); err != nil {
		p.add("profile", "%v", err)
	}
	if r.MaxConnectionsPerAccount < -1 {
		p.add("max_connections_per_account", "must be -1 (no limit), 0 (the profile's) or positive")
	}
	if len(p) == 0 || oc.Provider != "" {
		if err := oc.Validate(); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				key, msg, _ := strings.Cut(line, ": ")
				p.add(key, "%s", msg)
			}
		} else {
			r.Address, r.Security, _ = oc.Upstream()
		}
	}
	return r, p
}

func (c *Config) validateOAuth(p *problems) {
	seen := map[string]bool{}
	if c.Upstream.Address != "" || len(c.Upstreams) == 0 {
		seen[c.Upstream.Name] = true
	}
	for i, u := range c.Upstreams {
		key := fmt.Sprintf("upstreams[%d].", i)
		switch {
		case !validUpstreamName(u.Name):
			p.add(key+"name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", u.Name)
		case seen[u.Name]:
			p.add(key+"name", "%q is the name of another upstream (upstream.name %q is the pass-through one)", u.Name, c.Upstream.Name)
		}
		seen[u.Name] = true
		r, list := u.resolve()
		for _, pr := range list {
			p.add(key+pr.key, "%s", pr.msg)
		}
		if r.Timeout < 0 {
			p.add(key+"timeout", "must not be negative")
		}
		if r.Address != "" && r.Security == upstream.SecurityNone && !loopbackAddr(r.Address) && !u.AllowCleartextRemote {
			p.add(key+"security", `"none" would send tokens and mail in clear to %s, which is not loopback: use tls or starttls, or, for a private network, set allow_cleartext_remote = true`, r.Address)
		}
	}
}
