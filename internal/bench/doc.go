// Package bench is the harness behind `make bench` (cmd/purser-bench) and the multi-replica
// end-to-end test (e2e/replicas_test.go): it builds and runs the real purser binary on free
// ports, creates throwaway databases, loads the Envoy-shaped fixtures of extauthz/request and
// accesslog, drives Check traffic closed-loop, open-loop (latency from the intended send time,
// so a slow server cannot hide its queueing) and in bursts, streams access-log entries, and
// runs the two baselines purser is compared with: an allow-all Authorization server (the
// ceiling of the gRPC path) and the original service's per-request transaction strategy.
//
// Nothing here is imported by the product; it may import anything in the module except cmd
// and e2e.
package bench
