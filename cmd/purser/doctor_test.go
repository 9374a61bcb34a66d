package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	ext_authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/envoy"
)

// doctor runs `purser doctor` on a schema and returns its output and error.
func doctor(t *testing.T, dsn string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), append([]string{"doctor", "-database-url", dsn}, args...),
		func(string) string { return "" }, strings.NewReader(""), &out, &errb)
	return out.String() + errb.String(), err
}

func settleRows(t *testing.T, s *pgtest.Schema, route, cause string, n int) {
	t.Helper()
	for range n {
		_, err := s.Pool.Exec(context.Background(), `
INSERT INTO reservations (id, expires_at, resolved_at, state, route, provider, model, hold_cost, hold_tokens, cause)
VALUES (gen_random_uuid(), now(), now(), 'settled', $1, 'openai', 'gpt-4o-mini', 10, 10, $2)`, route, cause)
		require.NoError(t, err)
	}
}

// TestDoctor_HealthyDeployment: the shipped envoy.yaml and a ledger whose answers all
// carried usage: no problem, exit 0.
func TestDoctor_HealthyDeployment(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	settleRows(t, s, "openai-chat", "usage", 30)
	out, err := doctor(t, s.ConnString, "-envoy", filepath.Join("..", "..", "envoy", "envoy.yaml"))
	require.NoError(t, err, out)
	require.Contains(t, out, "ok      ledger: 30 requests resolved since")
	require.Contains(t, out, "ext_authz fails closed")
	require.Contains(t, out, "usage filters for JSON answers and event streams (and the Lua scan)")
	require.NotContains(t, out, "PROBLEM")
	require.NotContains(t, out, "note:", "envoy.yaml logs content-type and content-encoding")
	require.True(t, strings.HasSuffix(out, "no problems found\n"), out)
}

// TestDoctor_FlagsABrokenDeployment: a deliberately broken envoy.yaml (no usage filters, fail
// open) and a ledger where one route's answers came back compressed: doctor names each
// problem and exits 1; then a purser config reading another usage namespace than the
// shipped rules write.
func TestDoctor_FlagsABrokenDeployment(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	settleRows(t, s, "openai-chat", "usage", 10)
	settleRows(t, s, "openai-chat", "missing_usage:compressed", 20)
	settleRows(t, s, "anthropic-messages", "usage", 40)

	b, err := envoy.Files.ReadFile("envoy.yaml")
	require.NoError(t, err)
	js, err := yaml.YAMLToJSON(b)
	require.NoError(t, err)
	var bs bootstrapv3.Bootstrap
	require.NoError(t, protojson.Unmarshal(js, &bs))
	fc := bs.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0]
	var hcm hcmv3.HttpConnectionManager
	require.NoError(t, fc.GetTypedConfig().UnmarshalTo(&hcm))
	hcm.HttpFilters = slices.DeleteFunc(hcm.HttpFilters, func(f *hcmv3.HttpFilter) bool {
		return strings.Contains(f.GetName(), "to_metadata") || strings.Contains(f.GetName(), "lua")
	})
	var az ext_authzv3.ExtAuthz
	require.NoError(t, hcm.HttpFilters[0].GetTypedConfig().UnmarshalTo(&az))
	az.FailureModeAllow = true
	a, err := anypb.New(&az)
	require.NoError(t, err)
	hcm.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}
	a, err = anypb.New(&hcm)
	require.NoError(t, err)
	fc.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	broken, err := protojson.Marshal(&bs)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "broken-envoy.json")
	require.NoError(t, os.WriteFile(path, broken, 0o600))

	cfg := filepath.Join(t.TempDir(), "purser.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("usage:\n  namespaces: [llm.usage]\n"), 0o600))

	out, err := doctor(t, s.ConnString, "-envoy", path, "-config", cfg)
	var ee exitError
	require.ErrorAs(t, err, &ee, out)
	require.Equal(t, 1, ee.code)
	for _, want := range []string{
		`PROBLEM route "openai-chat" (openai gpt-4o-mini): 20 of 30 requests since`,
		"20 compressed",
		"the provider's answers were compressed",
		"ext_authz failure_mode_allow is true",
		"no filter reads usage from JSON answers",
		"no filter reads usage from event streams",
		"ok      clock: the database's clock is within",
	} {
		require.Contains(t, out, want)
	}
	require.NotContains(t, out, `route "anthropic-messages"`, "a healthy route is not a problem")
	require.Contains(t, err.Error(), "problem(s) found")

	// The shipped config with the usage namespace purser reads switched: the rules write
	// purser.usage, which this purser does not read.
	out, err = doctor(t, s.ConnString, "-envoy", filepath.Join("..", "..", "envoy", "envoy.yaml"), "-config", cfg, "-max-missing-percent", "100")
	require.Error(t, err)
	require.Contains(t, out, `usage is written to metadata namespace "purser.usage", which purser does not read`)
}
