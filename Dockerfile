# popbridge as a container: a static binary on a distroless base, run as a
# non-root user, with its state on a volume.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t popbridge .
#   docker run -v popbridge-state:/var/lib/popbridge -v "$PWD/popbridge.toml:/etc/popbridge/popbridge.toml:ro" \
#       -p 1110:1110 -p 9110:9110 popbridge
#
# The configuration must put the state under the volume
# (state.path = "/var/lib/popbridge/popbridge.db") and, for the health check,
# turn on the admin listener (admin.listen = "127.0.0.1:9110" or ":9110").

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same build as contrib/build.sh: static (no cgo), trimmed paths, the
# version stamped into the binary.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/popbridge ./cmd/popbridge

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/popbridge /usr/local/bin/popbridge
COPY config.toml.example /etc/popbridge/config.toml.example
USER nonroot:nonroot
VOLUME ["/var/lib/popbridge"]
# POP3, POP3S, admin (metrics and probes)
EXPOSE 1110 995 9110
# Distroless has no shell or curl: popbridge probes its own admin listener.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
	CMD ["/usr/local/bin/popbridge", "health", "-addr", "127.0.0.1:9110", "-ready"]
ENTRYPOINT ["/usr/local/bin/popbridge"]
CMD ["serve", "-config", "/etc/popbridge/popbridge.toml"]
