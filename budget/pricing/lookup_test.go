package pricing

import (
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

func TestCatalog_Lookup(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	tests := []struct {
		name         string
		provider     string
		model        string
		wantProvider string // "" means not found
		wantID       string
	}{
		{"Exact", "openai", "gpt-4o-mini", "openai", "gpt-4o-mini"},
		{"CaseInsensitive", "OpenAI", "GPT-4o-Mini", "openai", "gpt-4o-mini"},
		{"Whitespace", " openai ", " gpt-4o ", "openai", "gpt-4o"},
		{"KnownSnapshot", "openai", "gpt-4o-2024-08-06", "openai", "gpt-4o"},
		{"FutureSnapshotDateStripped", "openai", "gpt-4o-2099-01-31", "openai", "gpt-4o"},
		{"CompactDateStripped", "anthropic", "claude-3-haiku-20240307", "anthropic", "claude-3-haiku"},
		{"NoProviderModelMatch", "", "gpt-4o-mini", "openai", "gpt-4o-mini"},
		{"NoProviderClaude", "", "claude-sonnet-4-5-20250929", "anthropic", "claude-sonnet-4-5"},
		{"NoProviderGemini", "", "gemini-2.5-flash", "google", "gemini-2.5-flash"},
		{"NoProviderRegexModelMatch", "", "o3-mini", "openai", "o3-mini"},
		{"UnknownProviderFallsBackToModelMatch", "self-hosted", "gpt-4o", "openai", "gpt-4o"},
		{"ProviderPrefixed", "", "openai/gpt-4o", "openai", "gpt-4o"},
		{"ProviderPrefixedUnderOtherProvider", "azure", "openai/gpt-4o-mini", "openai", "gpt-4o-mini"},
		{"ProviderPrefixByProviderMatch", "", "mistralai/mistral-large-latest", "mistral", "mistral-large"},
		{"OpenRouterOwnEntryFirst", "openrouter", "anthropic/claude-sonnet-4.5", "openrouter", "anthropic/claude-sonnet-4.5"},
		{"OpenRouterSkippedEntryFallsToPrefix", "openrouter", "google/gemini-2.5-flash-lite", "google", "gemini-2.5-flash-lite"},
		{"GeminiModelsPrefix", "google", "models/gemini-2.5-pro", "google", "gemini-2.5-pro"},
		{"GeminiModelsPrefixNoProvider", "", "models/gemini-2.5-flash", "google", "gemini-2.5-flash"},
		{"ProviderMatchName", "vertex_ai", "gemini-2.5-flash", "google", "gemini-2.5-flash"},
		{"VertexClaudeAtDate", "vertex_ai", "claude-3-5-sonnet@20240620", "google", "claude-3-5-sonnet"},
		{"BedrockByProviderMatch", "bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "aws", "regional.anthropic.claude-3-5-sonnet-20240620-v1:0"},
		{"AzureOwnModel", "azure", "o4-mini", "azure", "o4-mini"},
		{"AzureFallbackOpenAI", "azure", "gpt-4o-2024-08-06", "openai", "gpt-4o"},
		{"AzureFallbackAnthropic", "azure", "claude-haiku-4-5", "anthropic", "claude-haiku-4-5"},
		{"AzureDeploymentNameUnknown", "azure", "my-prod-deployment", "", ""},
		{"GoogleFallbackAnthropic", "google", "claude-opus-4-1", "google", "claude-4-opus"},
		{"ProviderGivenNoCrossProviderGuess", "openai", "claude-3-haiku", "", ""},
		{"Unknown", "", "llama-3-8b-local", "", ""},
		{"Empty", "openai", "", "", ""},
		{"OnlyDateNotStripped", "", "2024-08-06", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for range 2 { // second time from the cache
				m, ok := c.Lookup(tt.provider, tt.model)
				if tt.wantProvider == "" {
					require.False(t, ok)
					require.Nil(t, m)
					continue
				}
				require.True(t, ok)
				require.Equal(t, tt.wantProvider, m.Provider)
				require.Equal(t, tt.wantID, m.ID)
			}
		})
	}
}

func TestStripDateSuffix(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"gpt-4o-2024-08-06":          "gpt-4o",
		"claude-3-haiku-20240307":    "claude-3-haiku",
		"claude-3-5-sonnet@20240620": "claude-3-5-sonnet",
		"model@2025-01-02":           "model",
		"gpt-4-0613":                 "",
		"gpt-4o":                     "",
		"x-1999-01-01":               "", // not a 20xx date
		"x-2024-13-01":               "",
		"x-20241301":                 "",
		"2024-08-06":                 "",
	}
	for in, want := range tests {
		require.Equal(t, want, stripDateSuffix(in), in)
	}
}

func TestModelIndex_FirstMatchWins(t *testing.T) {
	t.Parallel()
	// Index lookups must agree with a linear first-match scan even when an earlier model
	// matches by prefix and a later one by equality.
	data := `[{"id": "p", "name": "P", "api_pattern": "x", "models": [
		{"id": "a", "match": {"equals": "m-1"}, "prices": {"input_mtok": 1}},
		{"id": "b", "match": {"starts_with": "m-"}, "prices": {"input_mtok": 2}},
		{"id": "c", "match": {"or": [{"equals": "m-2"}, {"equals": "z"}]}, "prices": {"input_mtok": 3}},
		{"id": "d", "match": {"or": [{"equals": "y"}, {"contains": "zz"}]}, "prices": {"input_mtok": 4}},
		{"id": "e", "match": {"and": [{"starts_with": "q"}, {"ends_with": "r"}]}, "prices": {"input_mtok": 5}},
		{"id": "f", "match": {"regex": "^r\\d+$"}, "prices": {"input_mtok": 6}}
	]}]`
	c, err := ParseCatalog([]byte(data), "test")
	require.NoError(t, err)
	p := c.providers[0]
	for _, name := range []string{"m-1", "m-2", "m-3", "z", "y", "azzb", "qxr", "qx", "r12", "r1a", "nothing"} {
		var want *Model
		for _, e := range p.entries {
			if e.match.match(name) {
				want = e.model
				break
			}
		}
		require.Equal(t, want, p.index.find(name), name)
	}
	require.Equal(t, "a", p.index.find("m-1").ID)
	require.Equal(t, "b", p.index.find("m-2").ID)
	require.Equal(t, "c", p.index.find("z").ID)
}

// The lookup caches own their keys: a model or host cut from a large request string must
// not keep that string alive for as long as it stays cached.
func TestCaches_OwnTheirKeys(t *testing.T) {
	t.Parallel()
	c, err := Embedded() // a catalog of its own: the test reads its caches
	require.NoError(t, err)
	big := strings.Repeat("x", 1<<16) + "gpt-4o" + "api.openai.com"
	model := big[1<<16 : 1<<16+6]
	host := big[1<<16+6:]
	_, ok := c.Lookup("openai", model)
	require.True(t, ok)
	require.Equal(t, "openai", c.ProviderForHost(host))

	shares := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }
	seen := 0
	c.models.m.Range(func(k, _ any) bool {
		if key := k.(lookupKey); key.model == model {
			seen++
			require.False(t, shares(key.model, model), "the model cache keeps a view of the request's string")
		}
		return true
	})
	c.hosts.m.Range(func(k, _ any) bool {
		if k.(string) == host {
			seen++
			require.False(t, shares(k.(string), host), "the host cache keeps a view of the request's string")
		}
		return true
	})
	require.Equal(t, 2, seen)
}
