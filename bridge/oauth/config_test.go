package oauth_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/upstream"
)

func TestPresets(t *testing.T) {
	t.Setenv("TEST_OAUTH_SECRET", "s3cret")
	for _, tc := range []struct {
		cfg                oauth.Config
		auth, token, dev   string
		scopes             []string
		upstream           string
		flow               oauth.Flow
		mechanism          string
		authParamsContains []string
	}{
		{
			cfg:      oauth.Config{Provider: "microsoft365", ClientID: "id"},
			auth:     "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
			token:    "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
			dev:      "https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode",
			scopes:   []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"},
			upstream: "outlook.office365.com:993", flow: oauth.FlowDevice, mechanism: "XOAUTH2",
		},
		{
			cfg:      oauth.Config{Provider: "microsoft365", ClientID: "id", Tenant: "contoso.onmicrosoft.com", Flow: "client_credentials", ClientSecretEnv: "TEST_OAUTH_SECRET"},
			auth:     "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
			token:    "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
			dev:      "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode",
			scopes:   []string{"https://outlook.office365.com/.default"},
			upstream: "outlook.office365.com:993", flow: oauth.FlowClientCredentials, mechanism: "XOAUTH2",
		},
		{
			cfg:      oauth.Config{Provider: "outlook", ClientID: "id", Flow: "authcode"},
			auth:     "https://login.microsoftonline.com/consumers/oauth2/v2.0/authorize",
			token:    "https://login.microsoftonline.com/consumers/oauth2/v2.0/token",
			dev:      "https://login.microsoftonline.com/consumers/oauth2/v2.0/devicecode",
			scopes:   []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"},
			upstream: "outlook.office365.com:993", flow: oauth.FlowAuthCode, mechanism: "XOAUTH2",
		},
		{
			cfg:      oauth.Config{Provider: "gmail", ClientID: "id", ClientSecretEnv: "TEST_OAUTH_SECRET"},
			auth:     "https://accounts.google.com/o/oauth2/auth",
			token:    "https://oauth2.googleapis.com/token",
			dev:      "https://oauth2.googleapis.com/device/code",
			scopes:   []string{"https://mail.google.com/"},
			upstream: "imap.gmail.com:993", flow: oauth.FlowAuthCode, mechanism: "XOAUTH2",
			authParamsContains: []string{"access_type=offline", "prompt=consent", "redirect_uri=http%3A%2F%2F127.0.0.1"},
		},
	} {
		t.Run(tc.cfg.Provider+"/"+string(tc.flow), func(t *testing.T) {
			c, err := oauth.NewClient(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ep := c.Endpoint()
			if ep.AuthURL != tc.auth || ep.TokenURL != tc.token || ep.DeviceAuthURL != tc.dev {
				t.Errorf("endpoints %+v", ep)
			}
			if !slices.Equal(c.Scopes(), tc.scopes) {
				t.Errorf("scopes %q, want %q", c.Scopes(), tc.scopes)
			}
			addr, sec := c.Upstream()
			if addr != tc.upstream || sec != upstream.SecurityTLS || c.Flow() != tc.flow || c.Mechanism() != tc.mechanism {
				t.Errorf("upstream %s %v, flow %s, mechanism %s", addr, sec, c.Flow(), c.Mechanism())
			}
			if c.RefreshBefore() != 5*time.Minute {
				t.Errorf("RefreshBefore = %v", c.RefreshBefore())
			}
			if len(tc.authParamsContains) > 0 {
				r, err := c.NewAuthRequest("", "")
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range tc.authParamsContains {
					if !strings.Contains(r.URL, s) {
						t.Errorf("authorization URL %s lacks %s", r.URL, s)
					}
				}
			}
		})
	}
	if got := oauth.PresetNames(); !slices.Equal(got, []string{"generic", "gmail", "microsoft365", "outlook"}) {
		t.Errorf("PresetNames = %q", got)
	}
	p, _ := oauth.LookupPreset("gmail")
	if p.Supports(oauth.FlowDevice) || !p.NeedsSecret(oauth.FlowAuthCode) {
		t.Error("gmail must not offer the device flow and must need a secret")
	}
}

func TestConfigValidate(t *testing.T) {
	generic := oauth.Config{
		Provider: "generic", ClientID: "id", TokenURL: "https://idp.example/token", DeviceAuthURL: "https://idp.example/device",
		Scopes: []string{"imap"}, UpstreamAddress: "imap.example:993",
	}
	with := func(f func(*oauth.Config)) oauth.Config { c := generic; f(&c); return c }
	for _, tc := range []struct {
		name string
		cfg  oauth.Config
		want []string // substrings of the error; none: valid
	}{
		{"generic", generic, nil},
		{"unknown provider", oauth.Config{Provider: "yahoo", ClientID: "x"}, []string{"oauth.provider", "yahoo"}},
		{"no client id", with(func(c *oauth.Config) { c.ClientID = "" }), []string{"oauth.client_id: missing"}},
		{"inline secret", with(func(c *oauth.Config) { c.ClientSecret = "hunter2" }), []string{"oauth.client_secret", "client_secret_file"}},
		{"two secret sources", with(func(c *oauth.Config) { c.ClientSecretFile, c.ClientSecretEnv = "/f", "E" }), []string{"not both"}},
		{"gmail device", oauth.Config{Provider: "gmail", ClientID: "x", Flow: "device", ClientSecretEnv: "E"}, []string{"oauth.flow", "authcode"}},
		{"gmail without secret", oauth.Config{Provider: "gmail", ClientID: "x"}, []string{"needs a client secret"}},
		{"outlook tenant", oauth.Config{Provider: "outlook", ClientID: "x", Tenant: "contoso.com"}, []string{"oauth.tenant", "consumers"}},
		{"app-only multi-tenant", oauth.Config{Provider: "microsoft365", ClientID: "x", Flow: "client_credentials", ClientSecretEnv: "E"}, []string{"oauth.tenant", "organizations"}},
		{"app-only without secret", oauth.Config{Provider: "microsoft365", ClientID: "x", Tenant: "contoso.com", Flow: "client_credentials"}, []string{"needs a client secret"}},
		{"bad tenant", oauth.Config{Provider: "microsoft365", ClientID: "x", Tenant: "a/b"}, []string{"oauth.tenant"}},
		{"gmail tenant", oauth.Config{Provider: "gmail", ClientID: "x", ClientSecretEnv: "E", Tenant: "t"}, []string{"has no tenants"}},
		{"generic without endpoints", oauth.Config{Provider: "generic", ClientID: "x", Flow: "authcode", Scopes: []string{"s"}, UpstreamAddress: "h:1"},
			[]string{"oauth.auth_url: missing", "oauth.token_url: missing"}},
		{"generic without scopes or upstream", with(func(c *oauth.Config) { c.Scopes, c.UpstreamAddress = nil, "" }), []string{"oauth.scopes", "oauth.upstream_address"}},
		{"http endpoint", with(func(c *oauth.Config) { c.TokenURL = "http://idp.example/token" }), []string{"oauth.token_url", "https"}},
		{"http loopback endpoint", with(func(c *oauth.Config) { c.TokenURL = "http://127.0.0.1:8080/token" }), nil},
		{"non-loopback redirect", with(func(c *oauth.Config) {
			c.Flow, c.AuthURL, c.RedirectURL = "authcode", "https://idp.example/a", "https://app.example/cb"
		}), []string{"oauth.redirect_url"}},
		{"mechanism", with(func(c *oauth.Config) { c.Mechanism = "PLAIN" }), []string{"oauth.mechanism"}},
		{"security", with(func(c *oauth.Config) { c.UpstreamSecurity = "ssl" }), []string{"oauth.upstream_security"}},
		{"auth style", with(func(c *oauth.Config) { c.AuthStyle = "basic" }), []string{"oauth.auth_style"}},
		{"negative durations", with(func(c *oauth.Config) { c.RefreshBefore, c.Timeout = -1, -1 }), []string{"oauth.refresh_before", "oauth.timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Error("the error shows the inline secret")
			}
		})
	}
}

// The table as an operator writes it, embedded in a larger configuration.
func TestConfigTOML(t *testing.T) {
	var file struct {
		OAuth oauth.Config `toml:"oauth"`
	}
	md, err := toml.Decode(`
[oauth]
provider = "microsoft365"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
flow = "authcode"
refresh_before = "2m"
refresh_with_scope = false
mechanism = "oauthbearer"
`, &file)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) != 0 {
		t.Errorf("undecoded keys %v", u)
	}
	c, err := oauth.NewClient(file.OAuth)
	if err != nil {
		t.Fatal(err)
	}
	if c.RefreshBefore() != 2*time.Minute || c.Mechanism() != "OAUTHBEARER" || c.Flow() != oauth.FlowAuthCode {
		t.Errorf("RefreshBefore %v, Mechanism %s, Flow %s", c.RefreshBefore(), c.Mechanism(), c.Flow())
	}
}

func TestClientSecretSources(t *testing.T) {
	cfg := oauth.Config{Provider: "gmail", ClientID: "x", ClientSecretFile: t.TempDir() + "/missing"}
	if _, err := oauth.NewClient(cfg); err == nil || !strings.Contains(err.Error(), "client_secret_file") {
		t.Errorf("missing secret file: %v", err)
	}
	cfg = oauth.Config{Provider: "gmail", ClientID: "x", ClientSecretEnv: "TEST_OAUTH_UNSET_SECRET"}
	if _, err := oauth.NewClient(cfg); err == nil || !strings.Contains(err.Error(), "TEST_OAUTH_UNSET_SECRET") {
		t.Errorf("unset secret variable: %v", err)
	}
}

// What a refresh request carries: Microsoft gets the scopes and the client
// ID in the body; Google no scopes and the secret in the body. expires_in
// sent as a string is understood.
func TestRefreshRequest(t *testing.T) {
	var form url.Values
	var basic bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		form = r.PostForm
		_, _, basic = r.BasicAuth()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": "at2", "token_type": "Bearer", "expires_in": "3599", "scope": "granted"})
	}))
	defer srv.Close()
	t.Setenv("TEST_OAUTH_SECRET", "s3cret")
	clock := func() time.Time { return t0 }

	ms, err := oauth.NewClient(oauth.Config{Provider: "microsoft365", ClientID: "ms-id", TokenURL: srv.URL + "/token"})
	if err != nil {
		t.Fatal(err)
	}
	ms.SetClock(clock)
	g, err := ms.Refresh(t.Context(), "rt1")
	if err != nil {
		t.Fatal(err)
	}
	if form.Get("scope") != oauth.ScopeMicrosoftIMAP+" offline_access" || form.Get("client_id") != "ms-id" || form.Has("client_secret") || basic {
		t.Errorf("Microsoft refresh form %v (basic %v)", form, basic)
	}
	if g.AccessToken != "at2" || g.RefreshToken != "rt1" || !g.Expiry.Equal(t0.Add(3599*time.Second)) || g.Scope != "granted" {
		t.Errorf("grant %+v", g)
	}

	gm, err := oauth.NewClient(oauth.Config{Provider: "gmail", ClientID: "g-id", ClientSecretEnv: "TEST_OAUTH_SECRET", TokenURL: srv.URL + "/token"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gm.Refresh(t.Context(), "rt1"); err != nil {
		t.Fatal(err)
	}
	if form.Has("scope") || form.Get("client_secret") != "s3cret" || form.Get("refresh_token") != "rt1" || form.Get("grant_type") != "refresh_token" {
		t.Errorf("Google refresh form %v", form)
	}
}
