package main

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// Both passwords can come from stdin, one line each, upstream first.
func TestImportUIDLPasswordsFromStdin(t *testing.T) {
	stdin := strings.NewReader("up-secret\r\nold secret\n")
	in := bufio.NewReader(stdin)
	var prompt bytes.Buffer
	up, err := readPasswordFrom(stdin, in, &prompt, "alice (upstream)", "POPBRIDGE_PASSWORD")
	if err != nil {
		t.Fatal(err)
	}
	old, err := readPasswordFrom(stdin, in, &prompt, "alice (old server)", "POPBRIDGE_OLD_PASSWORD")
	if err != nil {
		t.Fatal(err)
	}
	if up != "up-secret" || old != "old secret" {
		t.Fatalf("passwords %q and %q", up, old)
	}
	if _, err := readPasswordFrom(stdin, in, &prompt, "bob", "POPBRIDGE_OLD_PASSWORD"); err == nil || !strings.Contains(err.Error(), "POPBRIDGE_OLD_PASSWORD") {
		t.Fatalf("no third line: %v", err)
	}
	if strings.Contains(prompt.String(), "secret") {
		t.Fatalf("a password reached the prompt: %q", prompt.String())
	}
}

func TestImportUIDLNeedsArguments(t *testing.T) {
	var out bytes.Buffer
	err := importUIDL([]string{"-config", "x.toml", "-user", "alice"}, strings.NewReader(""), &out)
	if err == nil || !strings.Contains(err.Error(), "-from") {
		t.Fatalf("without -from: %v", err)
	}
}
