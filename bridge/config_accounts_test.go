package bridge

import (
	"strings"
	"testing"
)

// TestConfigUpstreams: [[upstreams]] entries decode with the preset
// applied, [upstream].address becomes optional next to them, and every
// problem of every entry is reported with its key.
func TestConfigUpstreams(t *testing.T) {
	good := `
[accounts]
passthrough = false

[[upstreams]]
name = "contoso"
provider = "microsoft365"
[upstreams.oauth]
tenant = "contoso.onmicrosoft.com"
client_id = "id-1"

[[upstreams]]
name = "gmail"
provider = "gmail"
mailbox = "[Gmail]/All Mail"
[upstreams.oauth]
client_id = "id-2"
client_secret_env = "GMAIL_SECRET"
`
	cfg, err := ParseConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	ms, ok := cfg.oauthUpstream("contoso")
	if !ok || ms.Address != "outlook.office365.com:993" || ms.Mailbox != "INBOX" || ms.OAuth.Provider != "microsoft365" {
		t.Errorf("contoso resolved to %+v", ms)
	}
	g, ok := cfg.oauthUpstream("gmail")
	if !ok || g.Address != "imap.gmail.com:993" || g.Mailbox != "[Gmail]/All Mail" {
		t.Errorf("gmail resolved to %+v", g)
	}
	if cfg.passthroughOn() {
		t.Error("pass-through on without an [upstream] address")
	}

	bad := `
[upstream]
address = "imap.example.com:993"

[[upstreams]]
name = "default"
provider = "microsoft365"
[upstreams.oauth]
client_id = "x"
client_secret = "inline"

[[upstreams]]
name = "a/b"
provider = "nonesuch"

[[upstreams]]
name = "plain"
provider = "generic"
address = "mail.example.com:143"
security = "none"
[upstreams.oauth]
client_id = "x"
token_url = "https://id.example.com/token"
device_auth_url = "https://id.example.com/device"
scopes = ["mail"]
`
	_, err = ParseConfig(bad)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`upstreams[0].name: "default" is the name of another upstream`,
		"upstreams[0].oauth.client_secret: a secret is never written in the configuration",
		"upstreams[1].name",
		"upstreams[1].oauth.provider: unknown provider",
		`upstreams[2].security: "none" would send tokens and mail in clear`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	// Without [[upstreams]] and with pass-through on, [upstream].address
	// is required as before.
	if _, err := ParseConfig("[upstream]\nmailbox = \"INBOX\"\n"); err == nil || !strings.Contains(err.Error(), "upstream.address") {
		t.Errorf("no upstream.address: %v", err)
	}
}
