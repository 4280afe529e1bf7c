package oauth

import (
	"maps"
	"slices"
	"strings"

	"golang.org/x/oauth2"

	"github.com/popbridge/popbridge/internal/saslmech"
)

// Flow is a way to obtain a grant.
type Flow string

const (
	// FlowDevice is the device authorization grant (RFC 8628): the user
	// opens a URL on any device and types a code.
	FlowDevice Flow = "device"
	// FlowAuthCode is the authorization code grant with PKCE (RFC 7636):
	// the user opens a URL and the browser is sent back to a loopback
	// redirect URI, which popbridge listens on or the user pastes back.
	FlowAuthCode Flow = "authcode"
	// FlowClientCredentials is app-only access with the client's own
	// secret (RFC 6749 §4.4): no user, no refresh token.
	FlowClientCredentials Flow = "client_credentials"
)

// Provider names.
const (
	ProviderMicrosoft365 = "microsoft365"
	ProviderOutlook      = "outlook"
	ProviderGmail        = "gmail"
	ProviderGeneric      = "generic"
)

// Preset is what popbridge knows about an OAuth provider and its IMAP
// service. Endpoint URLs may hold "{tenant}".
type Preset struct {
	Name        string
	Description string

	// The IMAP service: host:port and tls | starttls | none.
	UpstreamAddress  string
	UpstreamSecurity string

	AuthURL, TokenURL, DeviceAuthURL string
	// DefaultTenant is the tenant of a tenant-aware provider ("" for
	// others); FixedTenant, when set, is the only tenant allowed.
	DefaultTenant string
	FixedTenant   string

	// Scopes are asked for by the user flows (offline_access, or
	// AuthParams, for a refresh token); AppScopes by client credentials.
	Scopes    []string
	AppScopes []string
	// RefreshWithScope sends the scopes with every refresh (Microsoft's
	// token endpoint needs them to know the resource).
	RefreshWithScope bool
	// AuthParams are added to the authorization URL (Google:
	// access_type=offline and prompt=consent, for a refresh token).
	AuthParams map[string]string
	// RedirectURL is the default loopback redirect URI of FlowAuthCode
	// (the registered one; the port is chosen at run time).
	RedirectURL string

	// Mechanism is the SASL mechanism of the IMAP login.
	Mechanism string

	// Flows are the flows the provider allows, the first the default.
	Flows []Flow
	// SecretRequired lists the flows that need a client secret.
	SecretRequired []Flow

	// AuthStyle says how the client authenticates to the token endpoint.
	AuthStyle oauth2.AuthStyle
}

// Supports reports whether the preset allows flow.
func (p Preset) Supports(f Flow) bool { return slices.Contains(p.Flows, f) }

// NeedsSecret reports whether flow needs a client secret.
func (p Preset) NeedsSecret(f Flow) bool { return slices.Contains(p.SecretRequired, f) }

// Microsoft's and Google's endpoints and scopes.
const (
	microsoftAuthorize  = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"
	microsoftToken      = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
	microsoftDeviceCode = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"

	ScopeMicrosoftIMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"
	ScopeMicrosoftApp  = "https://outlook.office365.com/.default"
	ScopeOfflineAccess = "offline_access"
	ScopeGmail         = "https://mail.google.com/"

	// TenantOrganizations, TenantConsumers and TenantCommon are
	// Microsoft's multi-tenant authorities: any work or school account,
	// any personal account, either.
	TenantOrganizations = "organizations"
	TenantConsumers     = "consumers"
	TenantCommon        = "common"
)

var presets = map[string]Preset{
	ProviderMicrosoft365: {
		Name:             ProviderMicrosoft365,
		Description:      "Microsoft 365 / Exchange Online (work or school accounts)",
		UpstreamAddress:  "outlook.office365.com:993",
		UpstreamSecurity: "tls",
		AuthURL:          microsoftAuthorize,
		TokenURL:         microsoftToken,
		DeviceAuthURL:    microsoftDeviceCode,
		DefaultTenant:    TenantOrganizations,
		Scopes:           []string{ScopeMicrosoftIMAP, ScopeOfflineAccess},
		AppScopes:        []string{ScopeMicrosoftApp},
		RefreshWithScope: true,
		RedirectURL:      "http://localhost",
		Mechanism:        saslmech.XOAuth2,
		Flows:            []Flow{FlowDevice, FlowAuthCode, FlowClientCredentials},
		SecretRequired:   []Flow{FlowClientCredentials},
		AuthStyle:        oauth2.AuthStyleInParams,
	},
	ProviderOutlook: {
		Name:             ProviderOutlook,
		Description:      "Outlook.com, Hotmail, Live (personal Microsoft accounts)",
		UpstreamAddress:  "outlook.office365.com:993",
		UpstreamSecurity: "tls",
		AuthURL:          microsoftAuthorize,
		TokenURL:         microsoftToken,
		DeviceAuthURL:    microsoftDeviceCode,
		DefaultTenant:    TenantConsumers,
		FixedTenant:      TenantConsumers,
		Scopes:           []string{ScopeMicrosoftIMAP, ScopeOfflineAccess},
		RefreshWithScope: true,
		RedirectURL:      "http://localhost",
		Mechanism:        saslmech.XOAuth2,
		Flows:            []Flow{FlowDevice, FlowAuthCode},
		AuthStyle:        oauth2.AuthStyleInParams,
	},
	ProviderGmail: {
		Name:             ProviderGmail,
		Description:      "Gmail and Google Workspace",
		UpstreamAddress:  "imap.gmail.com:993",
		UpstreamSecurity: "tls",
		AuthURL:          "https://accounts.google.com/o/oauth2/auth",
		TokenURL:         "https://oauth2.googleapis.com/token",
		// Google's device flow exists but refuses the mail scope: Gmail
		// is enrolled with the authorization code flow.
		DeviceAuthURL: "https://oauth2.googleapis.com/device/code",
		Scopes:        []string{ScopeGmail},
		AuthParams:    map[string]string{"access_type": "offline", "prompt": "consent"},
		RedirectURL:   "http://127.0.0.1",
		Mechanism:     saslmech.XOAuth2,
		Flows:         []Flow{FlowAuthCode},
		// Google's "Desktop app" clients have a secret (which is not
		// secret in the RFC 8252 sense) and the token endpoint wants it.
		SecretRequired: []Flow{FlowAuthCode},
		AuthStyle:      oauth2.AuthStyleInParams,
	},
	ProviderGeneric: {
		Name:           ProviderGeneric,
		Description:    "any OAuth 2.0 provider: endpoints, scopes and upstream given in the configuration",
		RedirectURL:    "http://127.0.0.1",
		Mechanism:      saslmech.XOAuth2,
		Flows:          []Flow{FlowDevice, FlowAuthCode, FlowClientCredentials},
		SecretRequired: []Flow{FlowClientCredentials},
		AuthStyle:      oauth2.AuthStyleAutoDetect,
	},
}

// LookupPreset returns the preset called name.
func LookupPreset(name string) (Preset, bool) {
	p, ok := presets[strings.ToLower(name)]
	if !ok {
		return Preset{}, false
	}
	p.Scopes = slices.Clone(p.Scopes)
	p.AppScopes = slices.Clone(p.AppScopes)
	p.Flows = slices.Clone(p.Flows)
	p.SecretRequired = slices.Clone(p.SecretRequired)
	p.AuthParams = maps.Clone(p.AuthParams)
	return p, true
}

// PresetNames returns the names of the presets, sorted.
func PresetNames() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
