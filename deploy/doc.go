// Package deploy holds purser's Helm chart (helm/purser) and its example values
// (helm/examples). It has no Go code: its tests render the chart with Helm's own Go SDK, for
// the default values and every example, lint it, and decode every rendered object strictly
// into its typed Kubernetes, Istio, Prometheus Operator or (mirrored) Envoy Gateway and
// CloudNativePG struct, as envoy/kubernetes_test.go does for the plain manifests, which the
// chart's default rendering must match.
package deploy
