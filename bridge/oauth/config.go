package oauth

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/popbridge/popbridge/internal/saslmech"
	"github.com/popbridge/popbridge/upstream"
)

// Config is the OAuth client configuration, meant to be embedded as a
// TOML table. The client secret is never written inline: it is read from
// a file or an environment variable.
//
//	provider = "microsoft365"
//	tenant = "contoso.onmicrosoft.com"
//	client_id = "00000000-0000-0000-0000-000000000000"
type Config struct {
	// Provider is a preset: microsoft365, outlook, gmail or generic.
	Provider string `toml:"provider"`
	// Tenant is Microsoft's directory (tenant ID or domain); default
	// "organizations" for microsoft365, always "consumers" for outlook.
	Tenant   string `toml:"tenant"`
	ClientID string `toml:"client_id"`
	// ClientSecretFile or ClientSecretEnv names where the client secret
	// is (at most one); needed by client credentials and by Google.
	ClientSecretFile string `toml:"client_secret_file"`
	ClientSecretEnv  string `toml:"client_secret_env"`
	// ClientSecret exists only to refuse an inline secret with a clear
	// message.
	ClientSecret string `toml:"client_secret"`
	// Flow is device, authcode or client_credentials; default: the
	// preset's first.
	Flow string `toml:"flow"`
	// RedirectURL is the registered loopback redirect URI of authcode
	// (default: the preset's, http://localhost or http://127.0.0.1).
	RedirectURL string `toml:"redirect_url"`
	// Endpoint and scope overrides; required for generic.
	AuthURL       string   `toml:"auth_url"`
	TokenURL      string   `toml:"token_url"`
	DeviceAuthURL string   `toml:"device_auth_url"`
	Scopes        []string `toml:"scopes"`
	// RefreshWithScope sends the scopes with each refresh (default: the
	// preset's; generic: no).
	RefreshWithScope *bool `toml:"refresh_with_scope"`
	// AuthStyle is how the client authenticates to the token endpoint
	// for generic: "params", "header" or "" (try both).
	AuthStyle string `toml:"auth_style"`
	// Mechanism is XOAUTH2 or OAUTHBEARER (default: the preset's).
	Mechanism string `toml:"mechanism"`
	// UpstreamAddress (host:port) and UpstreamSecurity (tls, starttls,
	// none) of the IMAP service; default: the preset's.
	UpstreamAddress  string `toml:"upstream_address"`
	UpstreamSecurity string `toml:"upstream_security"`
	// RefreshBefore is how long before expiry an access token is
	// refreshed (default 5m).
	RefreshBefore time.Duration `toml:"refresh_before"`
	// Timeout bounds each request to the provider (default 30s).
	Timeout time.Duration `toml:"timeout"`
}

// Defaults.
const (
	DefaultRefreshBefore = 5 * time.Minute
	DefaultTimeout       = 30 * time.Second
)

// multiTenant are Microsoft's authorities that are not one directory.
var multiTenant = []string{TenantOrganizations, TenantConsumers, TenantCommon}

// resolved is a validated Config with the preset applied.
type resolved struct {
	preset        Preset
	flow          Flow
	tenant        string
	authURL       string
	tokenURL      string
	deviceURL     string
	scopes        []string
	refreshScope  bool
	redirectURL   string
	mechanism     string
	upAddress     string
	upSecurity    upstream.Security
	refreshBefore time.Duration
	timeout       time.Duration
}

// Validate checks c without reading the secret. Every problem is
// reported, each naming its key.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

func (c Config) resolve() (resolved, error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("oauth.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	p, ok := LookupPreset(c.Provider)
	if !ok {
		bad("provider", "unknown provider %q (want one of %s)", c.Provider, strings.Join(PresetNames(), ", "))
		return resolved{}, errors.Join(errs...)
	}
	r := resolved{preset: p, refreshScope: p.RefreshWithScope, refreshBefore: c.RefreshBefore, timeout: c.Timeout}
	if c.ClientID == "" {
		bad("client_id", "missing")
	}
	if c.ClientSecret != "" {
		bad("client_secret", "a secret is never written in the configuration: put it in a file (client_secret_file) or an environment variable (client_secret_env)")
	}
	if c.ClientSecretFile != "" && c.ClientSecretEnv != "" {
		bad("client_secret_file", "set client_secret_file or client_secret_env, not both")
	}

	r.flow = Flow(c.Flow)
	if c.Flow == "" && len(p.Flows) > 0 {
		r.flow = p.Flows[0]
	}
	if !p.Supports(r.flow) {
		bad("flow", "%s does not support flow %q (supported: %s)", p.Name, c.Flow, joinFlows(p.Flows))
	}
	if p.NeedsSecret(r.flow) && c.ClientSecretFile == "" && c.ClientSecretEnv == "" {
		bad("client_secret_file", "%s with flow %s needs a client secret: set client_secret_file or client_secret_env", p.Name, r.flow)
	}

	// Tenant.
	r.tenant = c.Tenant
	switch {
	case p.DefaultTenant == "" && c.Tenant != "":
		bad("tenant", "%s has no tenants", p.Name)
	case p.FixedTenant != "" && c.Tenant != "" && c.Tenant != p.FixedTenant:
		bad("tenant", "%s always uses tenant %q (for work or school accounts use provider microsoft365)", p.Name, p.FixedTenant)
	case r.tenant == "":
		r.tenant = p.DefaultTenant
	}
	if p.DefaultTenant != "" && r.tenant != "" && !validTenant(r.tenant) {
		bad("tenant", "%q is not a tenant ID or domain", r.tenant)
	}
	if r.flow == FlowClientCredentials && p.DefaultTenant != "" && slices.Contains(multiTenant, strings.ToLower(r.tenant)) {
		bad("tenant", "client credentials need your directory (tenant ID or domain), not %q", r.tenant)
	}

	// Endpoints.
	pick := func(override, preset string) string {
		if override != "" {
			return override
		}
		return strings.ReplaceAll(preset, "{tenant}", url.PathEscape(r.tenant))
	}
	r.authURL = pick(c.AuthURL, p.AuthURL)
	r.tokenURL = pick(c.TokenURL, p.TokenURL)
	r.deviceURL = pick(c.DeviceAuthURL, p.DeviceAuthURL)
	need := map[string]string{"token_url": r.tokenURL}
	switch r.flow {
	case FlowAuthCode:
		need["auth_url"] = r.authURL
	case FlowDevice:
		need["device_auth_url"] = r.deviceURL
	}
	for _, key := range []string{"auth_url", "token_url", "device_auth_url"} {
		v, required := need[key]
		if required && v == "" {
			bad(key, "missing (provider %s has no default)", p.Name)
			continue
		}
		if v != "" {
			if err := checkEndpoint(v); err != nil {
				bad(key, "%v", err)
			}
		}
	}

	// Scopes.
	switch {
	case len(c.Scopes) > 0:
		r.scopes = slices.Clone(c.Scopes)
	case r.flow == FlowClientCredentials:
		r.scopes = slices.Clone(p.AppScopes)
	default:
		r.scopes = slices.Clone(p.Scopes)
	}
	if len(r.scopes) == 0 {
		bad("scopes", "missing (provider %s has no default)", p.Name)
	}
	if c.RefreshWithScope != nil {
		r.refreshScope = *c.RefreshWithScope
	}
	if _, err := authStyle(c.AuthStyle, p); err != nil {
		bad("auth_style", "%v", err)
	}

	// Redirect URI.
	r.redirectURL = c.RedirectURL
	if r.redirectURL == "" {
		r.redirectURL = p.RedirectURL
	}
	if r.flow == FlowAuthCode {
		if err := checkRedirect(r.redirectURL); err != nil {
			bad("redirect_url", "%v", err)
		}
	}

	// The IMAP login.
	r.mechanism = strings.ToUpper(c.Mechanism)
	if r.mechanism == "" {
		r.mechanism = p.Mechanism
	}
	if r.mechanism != saslmech.XOAuth2 && r.mechanism != saslmech.OAuthBearer {
		bad("mechanism", "%q: want XOAUTH2 or OAUTHBEARER", c.Mechanism)
	}
	r.upAddress = c.UpstreamAddress
	if r.upAddress == "" {
		r.upAddress = p.UpstreamAddress
	}
	if r.upAddress == "" {
		bad("upstream_address", "missing (provider %s has no default)", p.Name)
	} else if _, _, err := net.SplitHostPort(r.upAddress); err != nil {
		bad("upstream_address", "%v", err)
	}
	sec := c.UpstreamSecurity
	if sec == "" {
		sec = p.UpstreamSecurity
	}
	if sec == "" {
		sec = "tls"
	}
	var err error
	if r.upSecurity, err = upstream.ParseSecurity(sec); err != nil {
		bad("upstream_security", "%v", err)
	}

	if r.refreshBefore == 0 {
		r.refreshBefore = DefaultRefreshBefore
	}
	if r.refreshBefore < 0 {
		bad("refresh_before", "must not be negative")
	}
	if r.timeout == 0 {
		r.timeout = DefaultTimeout
	}
	if r.timeout < 0 {
		bad("timeout", "must not be negative")
	}
	return r, errors.Join(errs...)
}

func joinFlows(fs []Flow) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = string(f)
	}
	return strings.Join(s, ", ")
}

// validTenant accepts a GUID, a domain or one of Microsoft's authority
// names: letters, digits, dots and hyphens.
func validTenant(t string) bool {
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return false
		}
	}
	return t != ""
}

// checkEndpoint wants an absolute https URL; http only on loopback
// (tests, a local provider).
func checkEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}
	return fmt.Errorf("%q: want an https URL (http only on loopback)", s)
}

// checkRedirect wants an http loopback URI (RFC 8252 §7.3).
func checkRedirect(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "http" || !isLoopback(u.Hostname()) || u.Fragment != "" {
		return fmt.Errorf("%q: want a loopback URI such as http://127.0.0.1 or http://localhost", s)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readSecret reads the client secret from the file or the environment
// variable; "" when neither is configured.
func (c Config) readSecret() (string, error) {
	switch {
	case c.ClientSecretFile != "":
		b, err := os.ReadFile(c.ClientSecretFile)
		if err != nil {
			return "", fmt.Errorf("oauth.client_secret_file: %w", err)
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return "", fmt.Errorf("oauth.client_secret_file: %s is empty", c.ClientSecretFile)
		}
		return s, nil
	case c.ClientSecretEnv != "":
		s, ok := os.LookupEnv(c.ClientSecretEnv)
		if !ok || s == "" {
			return "", fmt.Errorf("oauth.client_secret_env: $%s is not set", c.ClientSecretEnv)
		}
		return s, nil
	}
	return "", nil
}

// Upstream returns the IMAP service c leads to (upstream_address and
// upstream_security, else the preset's), without reading the secret.
func (c Config) Upstream() (address string, security upstream.Security, err error) {
	r, err := c.resolve()
	if err != nil {
		return "", 0, err
	}
	return r.upAddress, r.upSecurity, nil
}
