package e2e_test

import (
	"os"
	"testing"
)

// 10. The same world with a real Envoy (ENVOY_BIN) instead of envoysim.
func scenarioRealEnvoy(t *testing.T, bin string) {
	envoyBin := os.Getenv("ENVOY_BIN")
	if envoyBin == "" {
		t.Skip("ENVOY_BIN not set: the real-Envoy scenario needs an envoy binary (1.38+); Docker is not used")
	}
	_ = bin
}
