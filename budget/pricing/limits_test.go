package pricing

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestEmbeddedLimits: every entry of data/max_output_tokens.json names a catalog model and a
// provider documentation page, and Lookup returns the figure (also through fallbacks and
// snapshot names).
func TestEmbeddedLimits(t *testing.T) {
	t.Parallel()
	c, err := Embedded()
	require.NoError(t, err)
	var raw rawLimits
	require.NoError(t, json.Unmarshal(embeddedLimits, &raw))
	require.NotEmpty(t, raw.Models)
	for _, l := range raw.Models {
		require.True(t, strings.HasPrefix(l.Source, "https://"), "%s/%s: source", l.Provider, l.ID)
		m, ok := c.Lookup(l.Provider, l.ID)
		require.True(t, ok, "%s/%s", l.Provider, l.ID)
		require.Equal(t, l.MaxOutputTokens, m.MaxOutputTokens, "%s/%s", l.Provider, l.ID)
		if m.ContextWindow > 0 {
			require.LessOrEqual(t, m.MaxOutputTokens, m.ContextWindow, "%s/%s: output within the context window", l.Provider, l.ID)
		}
	}
	for _, c2 := range []struct {
		provider, model string
		want            int64
	}{
		{"openai", "o3", 100_000},
		{"openai", "o3-2025-04-16", 100_000},     // a snapshot of o3
		{"", "gpt-4o-mini", 16_384},              // provider from the name
		{"openai", "gpt-5", 128_000},             //
		{"anthropic", "claude-opus-4-1", 32_000}, //
		{"google", "models/gemini-2.5-pro", 65_536},
		{"azure", "o1", 100_000},
	} {
		m, ok := c.Lookup(c2.provider, c2.model)
		require.True(t, ok, c2.model)
		require.Equal(t, c2.want, m.MaxOutputTokens, c2.model)
	}
}

func TestApplyLimits_Invalid(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct{ data, err string }{
		"UnknownModel":    {`{"models":[{"provider":"openai","id":"gpt-9","max_output_tokens":1,"source":"https://x"}]}`, "no such model"},
		"UnknownProvider": {`{"models":[{"provider":"nope","id":"gpt-4o","max_output_tokens":1,"source":"https://x"}]}`, "no such provider"},
		"NoSource":        {`{"models":[{"provider":"openai","id":"gpt-4o","max_output_tokens":1,"source":""}]}`, "source must be an https URL"},
		"Zero":            {`{"models":[{"provider":"openai","id":"gpt-4o","max_output_tokens":0,"source":"https://x"}]}`, "out of range"},
		"Twice":           {`{"models":[{"provider":"openai","id":"gpt-4o","max_output_tokens":1,"source":"https://x"},{"provider":"openai","id":"GPT-4o","max_output_tokens":1,"source":"https://x"}]}`, "listed twice"},
		"UnknownField":    {`{"models":[{"provider":"openai","id":"gpt-4o","max_output":1}]}`, "unknown field"},
	} {
		cat, err := ParseCatalog(embeddedData, embeddedSource)
		require.NoError(t, err)
		require.ErrorContains(t, cat.applyLimits([]byte(c.data)), c.err, name)
	}
}

// TestOverrides_MaxOutputTokens: the overrides file sets a model's maximum output like its
// context window, with or without restating its prices, and the version changes.
func TestOverrides_MaxOutputTokens(t *testing.T) {
	t.Parallel()
	base, err := Embedded()
	require.NoError(t, err)
	before, ok := base.Lookup("openai", "o3")
	require.True(t, ok)
	c, err := Load(base, strings.NewReader("models:\n  - {provider: openai, id: o3, max_output_tokens: 50000}\n  - {provider: acme, id: tiny, max_output_tokens: 64, prices: {input_mtok: 1, output_mtok: 2}}\n"))
	require.NoError(t, err)
	m, ok := c.Lookup("openai", "o3")
	require.True(t, ok)
	require.EqualValues(t, 50_000, m.MaxOutputTokens)
	require.Equal(t, before.PricesAt(time.Now()), m.PricesAt(time.Now()), "a limit-only override keeps the catalog's prices")
	require.Equal(t, before.ContextWindow, m.ContextWindow)
	tiny, ok := c.Lookup("acme", "tiny")
	require.True(t, ok)
	require.EqualValues(t, 64, tiny.MaxOutputTokens)
	require.NotEqual(t, base.Version(), c.Version())

	for yaml, msg := range map[string]string{
		"models:\n  - {provider: acme, id: new, max_output_tokens: 5}\n":                             "models[0].prices: missing (required for a model the catalog does not have)",
		"models:\n  - {provider: openai, id: o3, max_output_tokens: 0}\n":                            "models[0].max_output_tokens: must be positive",
		"models:\n  - {provider: openai, id: o3, max_output_tokens: many}\n":                         "models[0].max_output_tokens: must be an integer",
		"models:\n  - {provider: openai, id: o3, max_output_tokens: 1.5, prices: {input_mtok: 1}}\n": "models[0].max_output_tokens: 1.5 is not an integer",
	} {
		_, err := Load(base, strings.NewReader(yaml))
		require.EqualError(t, err, msg, yaml)
	}
}
