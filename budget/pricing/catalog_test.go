package pricing

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEmbedded(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	require.Regexp(t, regexp.MustCompile(`^genai-prices@47df840a\+[0-9a-f]{12}$`), c.Version())
	require.Len(t, c.Providers(), 34)
	require.Contains(t, c.Providers(), "openai")

	// The only entries the embedded data cannot represent exactly are float artefacts
	// (0.18000000000000002) and 1/12 (0.08333333333333334) in OpenRouter/HuggingFace rows.
	skipped := c.Skipped()
	require.Len(t, skipped, 7)
	for _, s := range skipped {
		require.Contains(t, s, "cannot be represented exactly")
	}
	require.Contains(t, skipped, "huggingface_together/Qwen/Qwen3-VL-8B-Instruct: prices.input_mtok: "+
		"0.18000000000000002 has more than 9 decimal places and cannot be represented exactly")

	// Parsing twice gives the same version.
	again, err := Embedded()
	require.NoError(t, err)
	require.Equal(t, c.Version(), again.Version())
	_, ok := c.DefaultModel()
	require.False(t, ok)
}

func TestCatalog_ProviderForHost(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	tests := []struct {
		name string
		host string
		want string
	}{
		{"OpenAI", "api.openai.com", "openai"},
		{"OpenAIWithPort", "api.openai.com:443", "openai"},
		{"UpperCase", "API.OpenAI.com", "openai"},
		{"Anthropic", "api.anthropic.com", "anthropic"},
		{"AzureOpenAI", "myresource.openai.azure.com", "azure"},
		{"AzureCognitive", "myresource.cognitiveservices.azure.com", "azure"},
		{"Bedrock", "bedrock-runtime.us-east-1.amazonaws.com", "aws"},
		{"BedrockWithPort", "bedrock-runtime.eu-west-3.amazonaws.com:443", "aws"},
		{"GeminiAPI", "generativelanguage.googleapis.com", "google"},
		{"VertexAI", "us-central1-aiplatform.googleapis.com", "google"},
		{"Mistral", "api.mistral.ai", "mistral"},
		{"Groq", "api.groq.com", "groq"},
		{"OpenRouter", "openrouter.ai", "openrouter"},
		{"FullURL", "https://api.deepseek.com/v1/chat/completions", "deepseek"},
		{"HuggingFaceRouterPath", "https://router.huggingface.co/together/v1/chat", "huggingface_together"},
		{"Unknown", "llm.internal.example", ""},
		{"Empty", "", ""},
		{"NotAPrefixMatch", "evil.com/api.openai.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, c.ProviderForHost(tt.host))
			require.Equal(t, tt.want, c.ProviderForHost(tt.host), "cached")
		})
	}
}

func TestParseCatalog(t *testing.T) {
	t.Parallel()
	const ok = `{"id": "m", "match": {"equals": "m"}, "prices": {"input_mtok": 1}}`
	provider := func(models ...string) string {
		return `[{"id": "p", "name": "P", "api_pattern": "https://p\\.example", "models": [` + strings.Join(models, ",") + `]}]`
	}
	tests := []struct {
		name        string
		data        string
		wantErr     string
		wantSkipped []string
		wantModels  int
	}{
		{name: "Valid", data: provider(ok), wantModels: 1},
		{name: "NotJSON", data: `{`, wantErr: "parse catalog test: unexpected EOF"},
		{name: "NotAList", data: `{}`, wantErr: "parse catalog test: json: cannot unmarshal object into Go value of type []pricing.rawProvider"},
		{name: "MissingProviderID", data: `[{"name": "x", "models": []}]`, wantErr: "parse catalog test: providers[0]: missing id"},
		{name: "DuplicateProvider", data: `[{"id": "a", "models": []}, {"id": "a", "models": []}]`,
			wantErr: `parse catalog test: providers[1]: duplicate provider id "a"`},
		{
			name:        "UnsupportedPriceKind",
			data:        provider(ok, `{"id": "img", "match": {"equals": "img"}, "prices": {"input_image_mtok": 1}}`),
			wantSkipped: []string{"p/img: prices.input_image_mtok: unsupported price kind"}, wantModels: 1,
		},
		{
			name:        "NegativePrice",
			data:        provider(`{"id": "neg", "match": {"equals": "neg"}, "prices": {"output_mtok": -1}}`),
			wantSkipped: []string{"p/neg: prices.output_mtok: must be >= 0"},
		},
		{
			name:        "BadRegex",
			data:        provider(`{"id": "re", "match": {"regex": "("}, "prices": {"input_mtok": 1}}`),
			wantSkipped: []string{"p/re: match: regex: error parsing regexp: missing closing ): `(`"},
		},
		{
			name:        "UnknownClause",
			data:        provider(`{"id": "cl", "match": {"like": "x"}, "prices": {"input_mtok": 1}}`),
			wantSkipped: []string{`p/cl: match: unknown match clause "like"`},
		},
		{
			name:        "TwoKeyClause",
			data:        provider(`{"id": "cl", "match": {"equals": "x", "contains": "y"}, "prices": {"input_mtok": 1}}`),
			wantSkipped: []string{"p/cl: match: match clause must have exactly one key, has 2"},
		},
		{
			name:        "BadTier",
			data:        provider(`{"id": "t", "match": {"equals": "t"}, "prices": {"input_mtok": {"base": 1, "tiers": [{"start": 1.5, "price": 2}]}}}`),
			wantSkipped: []string{"p/t: prices.input_mtok.tiers[0].start: 1.5 is not an integer"},
		},
		{
			name:        "DuplicateTier",
			data:        provider(`{"id": "t", "match": {"equals": "t"}, "prices": {"input_mtok": {"base": 1, "tiers": [{"start": 5, "price": 2}, {"start": 5, "price": 3}]}}}`),
			wantSkipped: []string{"p/t: prices.input_mtok.tiers: duplicate start 5"},
		},
		{
			name:        "BadStartDate",
			data:        provider(`{"id": "d", "match": {"equals": "d"}, "prices": [{"prices": {"input_mtok": 1}}, {"constraint": {"start_date": "2026-13-01"}, "prices": {"input_mtok": 2}}]}`),
			wantSkipped: []string{`p/d: prices[1].constraint: start_date: parsing time "2026-13-01": month out of range`},
		},
		{
			name:        "ConstraintMixed",
			data:        provider(`{"id": "d", "match": {"equals": "d"}, "prices": [{"constraint": {"start_date": "2026-01-01", "start_time": "00:00:00Z"}, "prices": {"input_mtok": 2}}]}`),
			wantSkipped: []string{"p/d: prices[0].constraint: want either start_date or start_time and end_time"},
		},
		{
			name:        "EmptyPrices",
			data:        provider(ok, `{"id": "free", "match": {"equals": "free"}, "prices": [{"prices": {"input_mtok": 1}}, {"constraint": {"start_date": "2026-01-01"}, "prices": {}}]}`),
			wantSkipped: []string{"p/free: prices[1].prices: no price given (write 0 for a free kind)"}, wantModels: 1,
		},
		{
			name:        "MissingPrices",
			data:        provider(`{"id": "n", "match": {"equals": "n"}}`),
			wantSkipped: []string{"p/n: prices: missing"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := ParseCatalog([]byte(tt.data), "test")
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantSkipped, c.Skipped())
			require.Len(t, c.providers[0].entries, tt.wantModels)
		})
	}
}

func TestCatalog_LookupConcurrent(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() { // assert, not require: FailNow belongs to the test's goroutine
			for i := range 2000 {
				name := fmt.Sprintf("unknown-model-%d-%d", g, i%300)
				_, ok := c.Lookup("openai", name)
				m, hit := c.Lookup("openai", "gpt-4o-mini")
				if !assert.False(t, ok, name) || !assert.True(t, hit) || !assert.Equal(t, "gpt-4o-mini", m.ID) {
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestHotCache_Bounded(t *testing.T) {
	t.Parallel()
	var h hotCache[int, int]
	for i := range hotCacheLimit * 3 {
		h.put(i, i)
	}
	n := 0
	h.m.Range(func(any, any) bool { n++; return true })
	require.LessOrEqual(t, n, hotCacheLimit)
	v, ok := h.get(hotCacheLimit*3 - 1)
	require.True(t, ok)
	require.Equal(t, hotCacheLimit*3-1, v)
}
