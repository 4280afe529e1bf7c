package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"time"
)

// health asks the admin listener of a running popbridge whether it is
// alive (/healthz) or ready (/readyz), prints the answer and fails unless
// it is 200. Distroless images have no curl: the container's HEALTHCHECK
// runs this.
func health(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9110", "the admin listener (admin.listen)")
	ready := fs.Bool("ready", false, "ask /readyz (store and upstream reachable) instead of /healthz")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get("http://" + *addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	stdout.Write(body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return nil
}

// buildVersion is the version stamped at build time (-ldflags
// "-X main.version=…", as contrib/build.sh and the Dockerfile do), or else
// the module version and VCS revision Go recorded in the binary.
func buildVersion() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			if len(s.Value) > 12 {
				s.Value = s.Value[:12]
			}
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += "-dirty"
			}
		}
	}
	return v
}
