//go:build vtprotobuf

package grpccodec_test

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/grpccodec"
)

// Built with the release tag, Envoy's responses take the generated path.
func TestGenerated_WithTag(t *testing.T) {
	t.Parallel()
	require.True(t, grpccodec.Generated(&authv3.CheckResponse{}))
}
