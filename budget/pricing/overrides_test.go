package pricing

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const sampleOverrides = `
# Operator prices.
models:
  - provider: openai
    id: gpt-4o                 # existing: new prices, same match rule
    prices:
      input_mtok: 2
      cache_read_mtok: "1"
      output_mtok: 8
  - provider: vllm             # new provider for a self-hosted server
    id: llama-3.1-8b
    match: {starts_with: meta-llama/llama-3.1-8b}
    context_window: 131072
    prices:
      input_mtok: 0.000000001
      output_mtok: {base: 0.2, tiers: [{start: 100000, price: 0.4}]}
  - provider: openai
    id: gpt-4o-mini-2024-07-18 # new model placed before the catalog's gpt-4o-mini
    prices: {input_mtok: 1, output_mtok: 1}
aliases:
  Prod-4o: azure/gpt-4o        # Azure deployment name -> OpenAI's gpt-4o via Azure's fallback
  cheap: vllm/meta-llama/llama-3.1-8b-instruct
default_price:
  input_mtok: 10
  output_mtok: 30
`

func TestLoad(t *testing.T) {
	t.Parallel()
	base := testCatalog(t)
	c, err := Load(base, strings.NewReader(sampleOverrides))
	require.NoError(t, err)
	at := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

	t.Run("VersionChanges", func(t *testing.T) {
		t.Parallel()
		require.NotEqual(t, base.Version(), c.Version())
		require.Regexp(t, `^genai-prices@47df840a\+[0-9a-f]{12}$`, c.Version())
		again, err := Load(base, strings.NewReader(sampleOverrides+"\n# a comment only\n"))
		require.NoError(t, err)
		require.Equal(t, c.Version(), again.Version(), "comments and layout do not change the version")
	})
	t.Run("OverriddenModel", func(t *testing.T) {
		t.Parallel()
		m := mustModel(t, c, "openai", "gpt-4o-2024-08-06") // the catalog's match rule is kept
		require.Equal(t, "gpt-4o", m.ID)
		// (1000 − 500) × 2 + 500 × 1 = 1500; 100 × 8 = 800.
		cost, err := m.CostAt(Usage{InputTokens: 1000, CacheReadTokens: 500, OutputTokens: 100}, at)
		require.NoError(t, err)
		require.Equal(t, Cost{Input: 1500, Output: 800, Total: 2300}, cost)
	})
	t.Run("BaseUnchanged", func(t *testing.T) {
		t.Parallel()
		m := mustModel(t, base, "openai", "gpt-4o")
		cost, err := m.CostAt(Usage{InputTokens: 1000}, at)
		require.NoError(t, err)
		require.Equal(t, int64(2500), cost.Total)
		_, ok := base.Lookup("vllm", "meta-llama/llama-3.1-8b-instruct")
		require.False(t, ok)
	})
	t.Run("NewProviderAndTier", func(t *testing.T) {
		t.Parallel()
		m := mustModel(t, c, "vllm", "meta-llama/Llama-3.1-8B-Instruct")
		require.Equal(t, "llama-3.1-8b", m.ID)
		require.Equal(t, "vllm", m.Provider)
		require.Equal(t, int64(131072), m.ContextWindow)
		// 150000 × 0.000000001 = 0.00015; above the 100000 tier output pays 0.4:
		// 1000 × 0.4 = 400; total 400.00015 → 401; Input ⌈0.00015⌉ = 1, Output 400.
		cost, err := m.CostAt(Usage{InputTokens: 150000, OutputTokens: 1000}, at)
		require.NoError(t, err)
		require.Equal(t, Cost{Input: 1, Output: 400, Total: 401}, cost)
	})
	t.Run("NewModelWinsOverCatalogRule", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, "gpt-4o-mini-2024-07-18", mustModel(t, c, "openai", "gpt-4o-mini-2024-07-18").ID)
		require.Equal(t, "gpt-4o-mini", mustModel(t, c, "openai", "gpt-4o-mini").ID)
	})
	t.Run("Aliases", func(t *testing.T) {
		t.Parallel()
		m := mustModel(t, c, "azure", "prod-4o")
		require.Equal(t, "openai", m.Provider)
		require.Equal(t, "gpt-4o", m.ID)
		require.Equal(t, "llama-3.1-8b", mustModel(t, c, "", "CHEAP").ID)
		// The operator's alias on the requested name wins over the body's model.
		p, err := c.PriceResponse("", "chat", "cheap", body(t, `{"model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}`), at)
		require.NoError(t, err)
		require.Equal(t, "llama-3.1-8b", p.Model.ID)
	})
	t.Run("DefaultPrice", func(t *testing.T) {
		t.Parallel()
		m, ok := c.DefaultModel()
		require.True(t, ok)
		require.Equal(t, "default", m.ID)
		// 100 × 10 + 10 × 30.
		cost, err := m.CostAt(Usage{InputTokens: 100, OutputTokens: 10}, at)
		require.NoError(t, err)
		require.Equal(t, int64(1300), cost.Total)
	})
	t.Run("Stacked", func(t *testing.T) {
		t.Parallel()
		c2, err := Load(c, strings.NewReader(`{"models": [{"provider": "openai", "id": "gpt-4o", "prices": {"input_mtok": 3}}]}`))
		require.NoError(t, err)
		cost, err := mustModel(t, c2, "openai", "gpt-4o").CostAt(Usage{InputTokens: 1000}, at)
		require.NoError(t, err)
		require.Equal(t, int64(3000), cost.Total)
		_, ok := c2.DefaultModel()
		require.True(t, ok, "earlier overrides are kept")
		require.Equal(t, "llama-3.1-8b", mustModel(t, c2, "", "cheap").ID)
		// The alias follows the new gpt-4o price: 1000 × 3.
		cost, err = mustModel(t, c2, "azure", "prod-4o").CostAt(Usage{InputTokens: 1000}, at)
		require.NoError(t, err)
		require.Equal(t, int64(3000), cost.Total)
	})
	t.Run("EmptyFile", func(t *testing.T) {
		t.Parallel()
		e, err := Load(base, strings.NewReader(""))
		require.NoError(t, err)
		require.Equal(t, "gpt-4o", mustModel(t, e, "openai", "gpt-4o").ID)
	})
}

func TestLoad_Errors(t *testing.T) {
	t.Parallel()
	base := testCatalog(t)
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"UnknownTopLevel", `modles: []`, `unknown field "modles" (allowed: models, aliases, default_price)`},
		{"NotAnObject", `[1, 2]`, `must be an object`},
		{"YAMLSyntax", "models:\n  - id: [", `yaml: line 2: did not find expected node content`},
		{"DuplicateKey", "aliases: {}\naliases: {}", `yaml: unmarshal errors:` + "\n" + `  line 2: key "aliases" already set in map`},
		{"ModelsNotList", `models: {}`, `models: must be a list`},
		{"UnknownModelField", `models: [{provider: openai, id: x, prices: {input_mtok: 1}, price: 2}]`,
			`models[0]: unknown field "price" (allowed: provider, id, match, context_window, max_output_tokens, prices)`},
		{"MissingProvider", `models: [{id: x, prices: {input_mtok: 1}}]`, `models[0].provider: missing`},
		{"MissingID", `models: [{provider: openai, prices: {input_mtok: 1}}]`, `models[0].id: missing`},
		{"MissingPrices", `models: [{provider: openai, id: x}]`, `models[0].prices: missing (required for a model the catalog does not have)`},
		{"NegativePrice", `models: [{provider: openai, id: a, prices: {input_mtok: 1}}, {provider: openai, id: b, prices: {input_mtok: 1}}, {provider: openai, id: x, prices: {input_mtok: -1}}]`,
			`models[2].prices.input_mtok: must be >= 0`},
		{"TooPrecise", `models: [{provider: openai, id: x, prices: {output_mtok: "0.0000000001"}}]`,
			`models[0].prices.output_mtok: 0.0000000001 has more than 9 decimal places and cannot be represented exactly`},
		{"UnknownPriceKind", `models: [{provider: openai, id: x, prices: {input_image_mtok: 1}}]`,
			`models[0].prices.input_image_mtok: unsupported price kind`},
		{"PriceNotNumber", `models: [{provider: openai, id: x, prices: {input_mtok: cheap}}]`,
			`models[0].prices.input_mtok: invalid number "cheap"`},
		{"TierBadStart", `models: [{provider: openai, id: x, prices: {input_mtok: {base: 1, tiers: [{start: -5, price: 2}]}}}]`,
			`models[0].prices.input_mtok.tiers[0].start: negative value -5`},
		{"TierUnknownField", `models: [{provider: openai, id: x, prices: {input_mtok: {base: 1, tier: []}}}]`,
			`models[0].prices.input_mtok: tiered price: json: unknown field "tier"`},
		{"BadMatch", `models: [{provider: openai, id: x, match: {like: x}, prices: {input_mtok: 1}}]`,
			`models[0].match: unknown match clause "like"`},
		{"BadContextWindow", `models: [{provider: openai, id: x, context_window: 1.5, prices: {input_mtok: 1}}]`,
			`models[0].context_window: 1.5 is not an integer`},
		{"DuplicateModel", `models: [{provider: openai, id: x, prices: {input_mtok: 1}}, {provider: OpenAI, id: X, prices: {input_mtok: 2}}]`,
			`models[1].id: duplicate model openai/X`},
		{"BadProviderID", `models: [{provider: "a/b", id: x, prices: {input_mtok: 1}}]`,
			`models[0].provider: invalid provider id "a/b"`},
		{"AliasNoSlash", `aliases: {x: gpt-4o}`, `aliases["x"]: target "gpt-4o": want "provider/model"`},
		{"AliasUnknownProvider", `aliases: {x: nope/gpt-4o}`, `aliases["x"]: target "nope/gpt-4o": unknown provider "nope"`},
		{"AliasUnknownModel", `aliases: {x: openai/gpt-99}`, `aliases["x"]: target "openai/gpt-99": no such model in provider openai`},
		{"AliasNotString", `aliases: {x: {a: b}}`, `aliases: must map names to "provider/model" strings`},
		{"DefaultPriceBad", `default_price: {input_mtok: -2}`, `default_price.input_mtok: must be >= 0`},
		{"DefaultPriceUnknownKey", `default_price: {inputmtok: 2}`, `default_price.inputmtok: unsupported price kind`},
		// An empty price set would make every unknown model (or this model) free.
		{"DefaultPriceEmpty", `default_price: {}`, `default_price: no price given (write 0 for a free kind)`},
		{"PricesEmpty", `models: [{provider: openai, id: x, prices: {}}]`, `models[0].prices: no price given (write 0 for a free kind)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Load(base, strings.NewReader(tt.in))
			require.EqualError(t, err, tt.wantErr)
		})
	}
	t.Run("TooLarge", func(t *testing.T) {
		t.Parallel()
		_, err := Load(base, strings.NewReader(strings.Repeat(" ", maxOverridesSize+1)))
		require.EqualError(t, err, "larger than 16777216 bytes")
	})
}

// FuzzLoadOverrides: Load never panics, and a catalog it returns is usable.
func FuzzLoadOverrides(f *testing.F) {
	base, err := Embedded()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{sampleOverrides, "", "{}", `{"models": [{"provider": "x", "id": "y", "prices": {"input_mtok": 1}}]}`,
		"models:\n- provider: openai\n  id: gpt-4o\n  prices: {input_mtok: 1e-9}\n",
		`aliases: {a: openai/gpt-4o, b: "openrouter/anthropic/claude-sonnet-4.5"}`,
		`default_price: {input_mtok: {base: 1, tiers: [{start: 0, price: 2}, {start: 10, price: 3}]}}`,
		"models: [{provider: openai, id: z, match: {or: [{regex: '^z'}, {and: [{contains: a}]}]}, prices: {requests_kcount: 1}}]",
		"&a [*a]", "models: !!binary aGVsbG8=", "? [a]\n: b",
		"models: [{provider: openai, id: o3, max_output_tokens: 50000}, {provider: x, id: y, max_output_tokens: 1e3, prices: {output_mtok: 1}}]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Load(base, strings.NewReader(in))
		if err != nil {
			return
		}
		require.NotEmpty(t, c.Version())
		for _, name := range []string{"gpt-4o", "a", "b", "z", "y", "x"} {
			if m, ok := c.Lookup("", name); ok {
				_, _ = m.Cost(Usage{InputTokens: 1000, OutputTokens: 1000})
			}
		}
		if m, ok := c.DefaultModel(); ok {
			_, err := m.UpperBound(1000, 1000)
			require.NoError(t, err)
		}
	})
}

func writeFile(t *testing.T, path, content string, mod time.Time) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	require.NoError(t, os.Chtimes(path, mod, mod))
}

// recorder collects Watcher callbacks.
type recorder struct {
	mu       sync.Mutex
	reloads  []string
	errs     []error
	reloaded chan struct{}
}

func newRecorder() *recorder { return &recorder{reloaded: make(chan struct{}, 16)} }

func (r *recorder) config(interval time.Duration, log *slog.Logger) WatcherConfig {
	return WatcherConfig{
		Interval: interval,
		Logger:   log,
		OnReload: func(c *Catalog) {
			r.mu.Lock()
			r.reloads = append(r.reloads, c.Version())
			r.mu.Unlock()
			r.reloaded <- struct{}{}
		},
		OnError: func(err error) {
			r.mu.Lock()
			r.errs = append(r.errs, err)
			r.mu.Unlock()
		},
	}
}

func TestWatcher_Reload(t *testing.T) {
	t.Parallel()
	base := testCatalog(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "prices.yaml")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	writeFile(t, path, "aliases: {a: openai/gpt-4o}\n", t0)

	var logs bytes.Buffer
	rec := newRecorder()
	w, err := NewWatcher(base, path, rec.config(time.Hour, slog.New(slog.NewTextHandler(&logs, nil))))
	require.NoError(t, err)
	v1 := w.Catalog().Version()
	require.Equal(t, "gpt-4o", mustModel(t, w.Catalog(), "", "a").ID)

	// Unchanged file: nothing happens.
	changed, err := w.Reload(ctx)
	require.NoError(t, err)
	require.False(t, changed)

	// Touched but same content: no reload.
	writeFile(t, path, "aliases: {a: openai/gpt-4o}\n", t0.Add(time.Second))
	changed, err = w.Reload(ctx)
	require.NoError(t, err)
	require.False(t, changed)

	// New content: reloaded.
	writeFile(t, path, "aliases: {a: openai/gpt-4o-mini}\n", t0.Add(2*time.Second))
	changed, err = w.Reload(ctx)
	require.NoError(t, err)
	require.True(t, changed)
	v2 := w.Catalog().Version()
	require.NotEqual(t, v1, v2)
	require.Equal(t, "gpt-4o-mini", mustModel(t, w.Catalog(), "", "a").ID)
	require.Contains(t, logs.String(), "price overrides reloaded")

	// Broken content: error reported once, last good catalog kept.
	writeFile(t, path, "aliases: {a: openai/gpt-99}\n", t0.Add(3*time.Second))
	changed, err = w.Reload(ctx)
	require.False(t, changed)
	require.EqualError(t, err, `reload price overrides `+path+`: aliases["a"]: target "openai/gpt-99": no such model in provider openai`)
	require.Equal(t, v2, w.Catalog().Version())
	require.Equal(t, int64(1), w.Failures())
	changed, err = w.Reload(ctx)
	require.NoError(t, err, "the same broken file is not reported again")
	require.False(t, changed)
	require.Equal(t, int64(1), w.Failures())
	require.Contains(t, logs.String(), "previous prices stay in force")

	// File removed: reported, catalog kept.
	require.NoError(t, os.Remove(path))
	_, err = w.Reload(ctx)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Equal(t, int64(2), w.Failures())
	require.Equal(t, v2, w.Catalog().Version())

	// Fixed: reloaded.
	writeFile(t, path, "aliases: {a: openai/o3}\n", t0.Add(4*time.Second))
	changed, err = w.Reload(ctx)
	require.NoError(t, err)
	require.True(t, changed)
	require.Equal(t, "o3", mustModel(t, w.Catalog(), "", "a").ID)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Len(t, rec.reloads, 2)
	require.Len(t, rec.errs, 2)

	// Cancelled context: no work.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = w.Reload(cctx)
	require.ErrorIs(t, err, context.Canceled)
}

func TestNewWatcher_Errors(t *testing.T) {
	t.Parallel()
	base := testCatalog(t)
	dir := t.TempDir()
	_, err := NewWatcher(base, filepath.Join(dir, "missing.yaml"), WatcherConfig{})
	require.ErrorIs(t, err, os.ErrNotExist)

	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "models: 3", time.Now())
	_, err = NewWatcher(base, bad, WatcherConfig{})
	require.EqualError(t, err, "price overrides "+bad+": models: must be a list")
}

func TestWatcher_Run(t *testing.T) {
	t.Parallel()
	base := testCatalog(t)
	path := filepath.Join(t.TempDir(), "prices.json")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	writeFile(t, path, `{"aliases": {"a": "openai/gpt-4o"}}`, t0)
	rec := newRecorder()
	w, err := NewWatcher(base, path, rec.config(5*time.Millisecond, nil))
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	writeFile(t, path, `{"aliases": {"a": "openai/gpt-4o-mini"}}`, t0.Add(time.Second))
	select {
	case <-rec.reloaded:
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s")
	}
	require.Equal(t, "gpt-4o-mini", mustModel(t, w.Catalog(), "", "a").ID)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}
