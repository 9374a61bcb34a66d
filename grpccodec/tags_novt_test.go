//go:build !vtprotobuf

package grpccodec_test

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/grpccodec"
)

// Built without the release tag, every message falls back to protobuf (and round-trips:
// TestMarshal_RoundTrips).
func TestGenerated_WithoutTag(t *testing.T) {
	t.Parallel()
	require.False(t, grpccodec.Generated(&authv3.CheckResponse{}))
}
