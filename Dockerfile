# syntax=docker/dockerfile:1
# purser and the fake LLM upstream in one small, non-root image.
#   docker build -t purser:dev .
#   docker run --rm purser:dev version
# The default command serves; `migrate`, `seed`, `check-config` ... are the other subcommands.
# The fake LLM (demo / e2e only): --entrypoint /usr/local/bin/fakellm.

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -tags vtprotobuf -ldflags="-s -w" -o /out/purser ./cmd/purser && \
    go build -trimpath -ldflags="-s -w" -o /out/fakellm ./cmd/fakellm

# distroless/static: no shell, no package manager, CA certificates included; runs as 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/purser /usr/local/bin/purser
COPY --from=build /out/fakellm /usr/local/bin/fakellm
USER 65532:65532
# 9000: gRPC (ext_authz, access log, health); 9090: HTTP (/healthz, /readyz, /metrics, admin)
EXPOSE 9000 9090
ENTRYPOINT ["/usr/local/bin/purser"]
CMD ["serve", "--grpc-addr=0.0.0.0:9000", "--http-addr=0.0.0.0:9090"]
