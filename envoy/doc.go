// Package envoy ships purser's data-plane configuration: a standalone Envoy bootstrap
// (envoy.yaml, 1.38+), its Lua variant for older Envoy (envoy-lua.yaml), the docker-compose demo
// bootstrap (envoy-demo.yaml), provider-key SDS files (secrets/), Istio, Envoy AI Gateway and
// Kubernetes manifests. The Go tests next to them validate every file against the typed schemas
// (go-control-plane protos, k8s.io/api, istio.io/api) and encode purser's rules for them.
//
// Files exposes the shipped files read-only, so other packages (the e2e Envoy stand-in, tools)
// can read the exact configuration that operators paste.
package envoy

import "embed"

// Files holds the shipped configuration files, with paths relative to this directory.
//
//go:embed *.yaml secrets/*.yaml kubernetes/*.yaml istio/*.yaml ai-gateway/*.yaml
var Files embed.FS
