package pop3_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/popbridge/popbridge/internal/saslmech"
	"github.com/popbridge/popbridge/pop3"
)

// testToken is a bearer token with every b64token character class.
const testToken = "ya29.a0Af-H_x~y+z/AB=="

// tokenBackend is a fakeBackend that also accepts testToken for testUser.
type tokenBackend struct {
	*fakeBackend
	mechs []string

	mu     sync.Mutex
	tokens []string // "MECH user token" per LoginToken
}

var _ pop3.TokenBackend = (*tokenBackend)(nil)

func newTokenBackend(mechs ...string) *tokenBackend {
	if mechs == nil {
		mechs = []string{saslmech.XOAuth2, saslmech.OAuthBearer}
	}
	return &tokenBackend{fakeBackend: newFakeBackend(), mechs: mechs}
}

func (b *tokenBackend) TokenMechanisms() []string { return b.mechs }

func (b *tokenBackend) LoginToken(ctx context.Context, ci *pop3.ConnInfo, mech, user, token string) (pop3.Maildrop, error) {
	b.mu.Lock()
	b.tokens = append(b.tokens, mech+" "+user+" "+token)
	b.mu.Unlock()
	if token != testToken {
		return nil, pop3.ErrAuthFailed
	}
	return b.fakeBackend.Login(ctx, ci, user, testPass)
}

func (b *tokenBackend) calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.tokens...)
}

func xoauth2(user, token string) string {
	return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

func oauthBearer(authzid, token string) string {
	return b64("n,a=" + authzid + ",\x01host=pop.example.org\x01port=995\x01auth=Bearer " + token + "\x01\x01")
}

func TestTokenMechanismsOffered(t *testing.T) {
	for name, tc := range map[string]struct {
		be   pop3.Backend
		sasl string
	}{
		"password backend": {newFakeBackend(), "SASL PLAIN LOGIN"},
		"both":             {newTokenBackend(), "SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER"},
		"xoauth2 only":     {newTokenBackend(saslmech.XOAuth2, "CRAM-MD5"), "SASL PLAIN LOGIN XOAUTH2"},
		"none":             {newTokenBackend([]string{}...), "SASL PLAIN LOGIN"},
	} {
		t.Run(name, func(t *testing.T) {
			c := pipeSession(t, newServer(t, tc.be, manyErrors), nil)
			c.expect("greeting", "+OK POP3 server ready")
			mechs := strings.Fields(strings.TrimPrefix(tc.sasl, "SASL "))
			c.run([]step{
				{"CAPA", ok("+OK capability list follows", "TOP", "USER", tc.sasl,
					"RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "UIDL", "IMPLEMENTATION popbridge", ".")},
				{"AUTH", append(append(ok("+OK mechanisms follow"), mechs...), ".")},
			})
			for _, m := range []string{saslmech.XOAuth2, saslmech.OAuthBearer, "CRAM-MD5"} {
				if !strings.Contains(tc.sasl, m) {
					c.run([]step{{"AUTH " + m + " " + xoauth2(testUser, testToken), ok("-ERR unsupported authentication mechanism")}})
				}
			}
		})
	}
}

func TestAuthToken(t *testing.T) {
	loggedIn := ok(maildropLine(defaultMsgs()))
	refusedX := ok("+ " + b64(`{"status":"401","schemes":"bearer"}`))
	refusedB := ok("+ " + b64(`{"status":"invalid_token","schemes":"bearer"}`))
	failed := ok("-ERR [AUTH] authentication failed")
	malformed := ok("-ERR malformed SASL response")
	long := strings.Repeat("A", 6000) // an AUTH line far over 255 octets
	for name, tc := range map[string]struct {
		steps []step
		calls []string
	}{
		"xoauth2 initial response": {
			steps: []step{{"AUTH XOAUTH2 " + xoauth2(testUser, testToken), loggedIn}},
			calls: []string{"XOAUTH2 alice " + testToken},
		},
		"xoauth2 continuation": {
			steps: []step{
				{"auth xoauth2", ok("+ ")},
				{xoauth2(testUser, testToken), loggedIn},
			},
			calls: []string{"XOAUTH2 alice " + testToken},
		},
		"oauthbearer initial response": {
			steps: []step{{"AUTH OAUTHBEARER " + oauthBearer(testUser, testToken), loggedIn}},
			calls: []string{"OAUTHBEARER alice " + testToken},
		},
		"oauthbearer continuation, escaped name": {
			steps: []step{
				{"AUTH OAUTHBEARER", ok("+ ")},
				{oauthBearer("a=3Db=2Cc", testToken), refusedB}, // the fake knows only alice
				{b64("\x01"), failed},
			},
			calls: []string{"OAUTHBEARER a=b,c " + testToken},
		},
		"refused tokens get the error challenge": {
			steps: []step{
				{"AUTH XOAUTH2 " + xoauth2(testUser, "wrong"), refusedX},
				{"", failed}, // XOAUTH2 clients answer with an empty line
				{"AUTH OAUTHBEARER " + oauthBearer(testUser, "wrong"), refusedB},
				{b64("\x01"), failed}, // RFC 7628: ^A
				{"AUTH OAUTHBEARER " + oauthBearer(testUser, long), refusedB},
				{"*", failed},
				{"AUTH XOAUTH2 " + xoauth2(testUser, testToken), loggedIn},
			},
			calls: []string{"XOAUTH2 alice wrong", "OAUTHBEARER alice wrong", "OAUTHBEARER alice " + long, "XOAUTH2 alice " + testToken},
		},
		"malformed": {
			steps: []step{
				{"AUTH XOAUTH2 " + b64("user=alice\x01auth=Bearer x\x01"), malformed},
				{"AUTH XOAUTH2 " + b64("user=alice\x01auth=Basic x\x01\x01"), malformed},
				{"AUTH XOAUTH2 " + b64("user=\x01auth=Bearer x\x01\x01"), malformed},
				{"AUTH XOAUTH2 " + b64("auth=Bearer x\x01\x01"), malformed},
				{"AUTH XOAUTH2 " + b64("user=alice\x01auth=Bearer a b\x01\x01"), malformed},
				{"AUTH XOAUTH2 " + b64("user=alice\x01auth=Bearer x\x01auth=Bearer y\x01\x01"), malformed},
				{"AUTH OAUTHBEARER " + b64("n,,\x01auth=Bearer x\x01\x01"), malformed},                   // no user
				{"AUTH OAUTHBEARER " + b64("p=tls-unique,a=alice,\x01auth=Bearer x\x01\x01"), malformed}, // channel binding
				{"AUTH OAUTHBEARER " + b64("n,a=al=ice,\x01auth=Bearer x\x01\x01"), malformed},
				{"AUTH OAUTHBEARER " + b64("n,a=alice,\x01host=h\x01\x01"), malformed},
				{"AUTH OAUTHBEARER " + b64("n,a=alice,auth=Bearer x\x01\x01"), malformed},
				{"AUTH OAUTHBEARER =", malformed},
				{"AUTH XOAUTH2", ok("+ ")},
				{"*", ok("-ERR authentication cancelled")},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			be := newTokenBackend()
			srv, logs := observedServer(be, manyErrors)
			c := pipeSession(t, srv, nil)
			c.expect("greeting", "+OK POP3 server ready")
			c.run(tc.steps)
			if got := be.calls(); strings.Join(got, "|") != strings.Join(tc.calls, "|") {
				t.Errorf("LoginToken calls\n got %q\nwant %q", got, tc.calls)
			}
			c.close()
			noSecrets(t, logs, testToken, long, "wrong")
		})
	}
}

func TestLongLinesOnlyForAuth(t *testing.T) {
	be := newTokenBackend()
	c := pipeSession(t, newServer(t, be, manyErrors), nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"NOOP", ok("-ERR command not valid in this state")}, // a long first line closes
		{"USER " + strings.Repeat("u", 600), ok("-ERR line too long")},
		{"AUTH XOAUTH2 " + xoauth2(testUser, strings.Repeat("t", 10000)), ok("+ " + b64(`{"status":"401","schemes":"bearer"}`))},
		{"", ok("-ERR [AUTH] authentication failed")},
		{"AUTH XOAUTH2 " + strings.Repeat("A", 17000), ok("-ERR line too long")},
		{"AUTH PLAIN " + b64("\x00"+testUser+"\x00"+testPass), ok(maildropLine(defaultMsgs()))},
		{"NOOP " + strings.Repeat("x", 600), ok("-ERR line too long")},
		{"AUTH " + strings.Repeat("x", 600), ok("-ERR line too long")},
	})
}
