#!/bin/sh
# Builds a static popbridge binary with its version stamped in, as the
# Dockerfile does: contrib/build.sh [OUTPUT] (default ./popbridge).
set -eu
cd "$(dirname "$0")/.."
out="${1:-popbridge}"
version="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$out" ./cmd/popbridge
echo "built $out ($version)"
