package main

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/purser-dev/purser/budget/pricing"
)

// The example files of examples/ are loaded by the code that reads each format, and checked
// against the format: every field the format has appears in its example and in the reference
// (docs/formats.md), so adding, renaming or removing a field fails here until the example
// and the reference follow.

const (
	exampleConfig  = "../../examples/config.yaml"
	exampleBudgets = "../../examples/budgets.yaml"
	examplePrices  = "../../examples/prices.yaml"
	formatsDoc     = "../../docs/formats.md"
)

func TestExamples_Config(t *testing.T) {
	t.Parallel()
	fc, err := loadFileConfig(exampleConfig)
	require.NoError(t, err, "examples/config.yaml decodes strictly")
	require.NoError(t, fc.validate(), "examples/config.yaml is valid")
	require.Equal(t, []string{"authorization", "x-api-key", "api-key", "x-goog-api-key"}, fc.Identity.CredentialSources, "credential_sources")
	require.Equal(t, "sub", fc.Identity.JWT.Claims[0].Claim, "identity.jwt.claims[0].claim")
	require.Equal(t, "team", fc.Identity.JWT.Claims[1].Subject, "identity.jwt.claims[1].subject")
	require.Equal(t, "x-tenant", fc.Identity.TrustedHeaders[0].Header, "identity.trusted_headers[0].header")
	require.Equal(t, int64(2_000_000), *fc.Policies.ExternalInput, "policies.external_input_tokens")
	require.Equal(t, "usage.prompt_tokens", fc.Usage.Headers["x-usage-input-tokens"], "usage.headers")
	require.Equal(t, 512, fc.Ledger.MaxBatch, "ledger.max_batch")

	fields := structPaths(reflect.TypeFor[fileConfig](), "")
	require.Contains(t, fields, "identity.jwt.claims[].subject", "the walk reaches nested lists of structs")
	requireCovered(t, exampleConfig, fields, yamlPaths(t, exampleConfig), "#configuration-file")
}

func TestExamples_Budgets(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(exampleBudgets)
	require.NoError(t, err)
	d, err := parseApplyFile(data)
	require.NoError(t, err, "examples/budgets.yaml is a valid apply file")
	require.Len(t, d.keys, 1, "keys")
	require.Equal(t, keyState{Name: "ci-bot", Subjects: []string{"team:ml"}, AllowedModels: []string{"gpt-4o*"},
		ExpiresAt: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}, d.keys[0], "keys[0]")
	require.Len(t, d.budgets, 3, "budgets")
	b := d.budgets[0]
	require.Equal(t, int64(500_000_000), b.Limit, "budgets[0].limit: $500.00 in micro-USD")
	require.Equal(t, "Europe/Paris", b.Timezone, "budgets[0].timezone")
	require.Equal(t, 15, b.AnchorDay, "budgets[0].anchor_day")
	require.Equal(t, []int{50, 80}, b.WarnAt, "budgets[0].warn_at")
	b = d.budgets[1]
	require.Equal(t, int64(2_000_000), b.Limit, "budgets[1].limit: whole tokens")
	require.Equal(t, "tokens", string(b.Unit), "budgets[1].unit")
	require.Equal(t, map[string]string{"env": "prod"}, b.Route, "budgets[1].route")
	require.False(t, d.budgets[2].Hard, "budgets[2].hard: false")
	require.True(t, d.budgets[0].Hard, "hard defaults to true")
	require.Len(t, d.templates, 1, "templates")
	require.Equal(t, "user", d.templates[0].Target, "templates[0].subject_kind")
	require.True(t, d.managedSubjects["org:acme"], "managed_subjects")

	// Budgets take subject and templates subject_kind: each declaration field appears in one.
	var fields []string
	for _, f := range structPaths(reflect.TypeFor[applyFile](), "") {
		if f != "keys[]" && f != "budgets[]" && f != "templates[]" {
			fields = append(fields, f)
		}
	}
	fields = append(fields, structPaths(reflect.TypeFor[keyDecl](), "keys[].")...)
	present := yamlPaths(t, exampleBudgets)
	for _, f := range structPaths(reflect.TypeFor[defDecl](), "") {
		if present["templates[]."+f] && !present["budgets[]."+f] {
			fields = append(fields, "templates[]."+f)
		} else {
			fields = append(fields, "budgets[]."+f)
		}
	}
	requireCovered(t, exampleBudgets, fields, present, "#apply-file")
}

func TestExamples_Prices(t *testing.T) {
	t.Parallel()
	cat, err := loadCatalog(examplePrices)
	require.NoError(t, err, "examples/prices.yaml loads over the embedded catalog")
	million := pricing.Usage{InputTokens: 1_000_000, OutputTokens: 1_000_000}

	m, ok := cat.Lookup("openai", "gpt-4o")
	require.True(t, ok, "openai/gpt-4o")
	c, err := m.Cost(million)
	require.NoError(t, err)
	require.Equal(t, int64(12_500_000), c.Total, "gpt-4o at the overridden $2.50 + $10 per million tokens")
	alias, ok := cat.Lookup("", "prod-gpt4o")
	require.True(t, ok, "the alias prod-gpt4o resolves")
	require.Equal(t, m.ID, alias.ID, "prod-gpt4o is openai/gpt-4o")

	llama, ok := cat.Lookup("vllm", "llama-3.1-70b-instruct-awq")
	require.True(t, ok, "the new vllm model matches by its starts_with rule")
	require.Equal(t, int64(128_000), llama.ContextWindow, "context_window")
	require.Equal(t, int64(8192), llama.MaxOutputTokens, "max_output_tokens")
	c, err = llama.Cost(pricing.Usage{InputTokens: 50_000, OutputTokens: 1_000_000})
	require.NoError(t, err)
	require.Equal(t, int64(10_000+600_000+100), c.Total, "llama below the 100k-input tier: $0.20 and $0.60 per million, $0.10 per thousand requests")
	c, err = llama.Cost(million)
	require.NoError(t, err)
	require.Equal(t, int64(200_000+800_000+100), c.Total, "llama above the 100k-input tier: output at $0.80 per million")

	sonnet, ok := cat.Lookup("anthropic", "claude-sonnet-4-5")
	require.True(t, ok, "anthropic/claude-sonnet-4-5")
	require.Equal(t, int64(32_000), sonnet.MaxOutputTokens, "a limits-only override sets max_output_tokens")
	c, err = sonnet.Cost(million)
	require.NoError(t, err)
	require.Positive(t, c.Total, "a limits-only override keeps the catalog's prices")

	dflt, ok := cat.DefaultModel()
	require.True(t, ok, "default_price is set")
	c, err = dflt.Cost(million)
	require.NoError(t, err)
	require.Equal(t, int64(40_000_000), c.Total, "default_price: $10 + $30 per million")

	// The format is strict: an unknown field is an error, not ignored.
	data, err := os.ReadFile(examplePrices)
	require.NoError(t, err)
	_, err = pricing.Load(cat, bytes.NewReader(append(data, "\nmodelz: []\n"...)))
	require.ErrorContains(t, err, `unknown field "modelz"`, "an unknown top-level field is rejected")

	// The format's fields (budget/pricing/overrides.go, prices.go) and price kinds.
	fields := []string{"models", "models[].provider", "models[].id", "models[].match", "models[].context_window",
		"models[].max_output_tokens", "models[].prices", "aliases", "default_price"}
	requireCovered(t, examplePrices, fields, yamlPaths(t, examplePrices), "#price-overrides")
	doc, err := os.ReadFile(formatsDoc)
	require.NoError(t, err)
	for _, k := range []string{"input_mtok", "cache_read_mtok", "cache_write_mtok", "input_audio_mtok", "cache_audio_read_mtok",
		"output_mtok", "output_audio_mtok", "requests_kcount"} {
		_, err := pricing.Load(cat, strings.NewReader("default_price: {"+k+": 1}"))
		require.NoError(t, err, "price kind %s is accepted", k)
		require.True(t, strings.Contains(string(doc), "`"+k+"`"), "docs/formats.md documents the price kind %s", k)
	}
}

// requireCovered checks that every field of a format appears in its example file and, as
// `field`, in docs/formats.md.
func requireCovered(t *testing.T, example string, fields []string, present map[string]bool, anchor string) {
	t.Helper()
	doc, err := os.ReadFile(formatsDoc)
	require.NoError(t, err)
	for _, f := range fields {
		require.True(t, present[f], "%s sets %s (every field of the format appears in its example)", example, f)
		require.True(t, strings.Contains(string(doc), "`"+f+"`"), "docs/formats.md%s documents %s", anchor, f)
	}
}

// structPaths lists the JSON field paths of a struct type: nested structs as a.b, lists of
// structs as a[].b. Maps and raw JSON are leaves.
func structPaths(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		path := prefix + name
		switch {
		case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]():
			out = append(out, path)
			out = append(out, structPaths(ft, path+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, path)
			out = append(out, structPaths(ft.Elem(), path+"[].")...)
		case ft.Kind() == reflect.Slice && ft != reflect.TypeFor[json.RawMessage]() && ft.Elem() == reflect.TypeFor[json.RawMessage]():
			out = append(out, path+"[]")
		default:
			out = append(out, path)
		}
	}
	slices.Sort(out)
	return out
}

// yamlPaths lists the paths a YAML file sets, as structPaths writes them (map keys included).
func yamlPaths(t *testing.T, file string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	var v any
	require.NoError(t, yaml.Unmarshal(data, &v), "%s is YAML", file)
	out := map[string]bool{}
	var walk func(v any, path string)
	walk = func(v any, path string) {
		if path != "" {
			out[path] = true
		}
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if path == "" {
					walk(c, k)
				} else {
					walk(c, path+"."+k)
				}
			}
		case []any:
			for _, c := range x {
				walk(c, path+"[]")
			}
		}
	}
	walk(v, "")
	return out
}
