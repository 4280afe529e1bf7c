package configfile

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

type color string

func (c *color) UnmarshalText(b []byte) error {
	switch string(b) {
	case "red", "green":
		*c = color(b)
		return nil
	}
	return fmt.Errorf("unknown value %q (want red or green)", b)
}

type item struct {
	Name  string `toml:"name"`
	Color color  `toml:"color"`
}

type conf struct {
	Top    string `toml:"top"`
	Server struct {
		Listen  string        `toml:"listen"`
		Timeout time.Duration `toml:"timeout"`
		Color   color         `toml:"color"`
		Tags    []string      `toml:"tags"`
	} `toml:"server"`
	Items []item `toml:"items"`
}

func TestDecodeAll(t *testing.T) {
	var c conf
	c.Server.Listen = "default"
	c.Server.Timeout = time.Second
	err := Decode(`top = "t"
[server]
listen = "127.0.0.1:1110"
timeout = "5m"
color = "red"
tags = ["a", "b"]
[[items]]
name = "one"
color = "green"
[[items]]
name = "two"
`, &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Top != "t" || c.Server.Listen != "127.0.0.1:1110" || c.Server.Timeout != 5*time.Minute || c.Server.Color != "red" ||
		len(c.Server.Tags) != 2 || len(c.Items) != 2 || c.Items[0].Color != "green" || c.Items[1].Name != "two" {
		t.Errorf("decoded %+v", c)
	}
}

// TestDecodeReportsEveryProblem: all problems at once, each with its key
// and line, in the order of the file; keys that failed keep their
// defaults.
func TestDecodeReportsEveryProblem(t *testing.T) {
	var c conf
	c.Server.Listen = "default"
	c.Server.Timeout = time.Second
	err := Decode(`[server]
listen = 42
timeout = "5 minutes"
color = "blue"
colour = "red"
[[items]]
name = "one"
color = "purple"
[nosuch]
x = 1
`, &c)
	var kes []*KeyError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var ke *KeyError
		if !errors.As(e, &ke) {
			t.Fatalf("not a KeyError: %v", e)
		}
		kes = append(kes, ke)
	}
	want := []struct {
		key  string
		line int
		msg  string
	}{
		{"server.listen", 2, "incompatible types"},
		{"server.timeout", 3, "5 minutes"},
		{"server.color", 4, `unknown value "blue" (want red or green)`},
		{"server.colour", 5, "unknown key"},
		{"items[0].color", 8, `unknown value "purple"`},
		{"nosuch", 9, "unknown key"},
	}
	if len(kes) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(kes), len(want), err)
	}
	for i, w := range want {
		if kes[i].Key != w.key || kes[i].Line != w.line || !strings.Contains(kes[i].Msg, w.msg) {
			t.Errorf("error %d = %q (line %d), want %s (line %d) with %q", i, kes[i].Error(), kes[i].Line, w.key, w.line, w.msg)
		}
		if strings.HasPrefix(kes[i].Msg, "toml:") {
			t.Errorf("error %d keeps the library's prefix: %q", i, kes[i].Msg)
		}
	}
	if c.Server.Listen != "default" || c.Server.Timeout != time.Second || c.Server.Color != "" {
		t.Errorf("failed keys changed their defaults: %+v", c.Server)
	}
}

func TestDecodeSyntaxError(t *testing.T) {
	var c conf
	err := Decode("[server]\nlisten = \"unterminated\n", &c)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("syntax error: %v", err)
	}
}
