package request

import (
	"strconv"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/pricing"
)

// checkRequest builds a minimal Envoy-shaped CheckRequest (raw_body, pseudo-headers,
// content-length, x-envoy-auth-partial-body) for synthetic cases.
func checkRequest(method, host, path, body string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{":authority": host, ":method": method, ":path": path, "x-request-id": "rid-1"}
	if body != "" {
		h["content-length"] = strconv.Itoa(len(body))
		h["x-envoy-auth-partial-body"] = "false"
	}
	for k, v := range headers {
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Id: "7", Method: method, Host: host, Path: path, Headers: h, RawBody: []byte(body)}}}}
}

var fullConfig = &Config{
	CredentialSources: []string{"authorization", "x-api-key", "api-key", "x-goog-api-key", "query:key"},
	JWT: JWTConfig{Claims: []ClaimMapping{
		{Claim: "sub", Subject: "user"}, {Claim: "groups", Subject: "team"}, {Claim: "org_id", Subject: "org"}}},
}

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		fixture string
		check   func(t *testing.T, r Request)
	}{
		{"openai_chat", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Equal(t, "openai", r.Provider)
			require.Equal(t, pricing.FlavorChat, r.Flavor)
			require.Equal(t, "gpt-4o-mini", r.Model)
			require.False(t, r.Stream)
			require.Equal(t, int64(256), r.OutputCap)
			require.True(t, r.HasOutputCap)
			require.NoError(t, r.BodyError)
			require.NoError(t, r.CapError)
			require.Equal(t, int64(203), r.ContentLength)
			require.False(t, r.Truncated)
			require.Equal(t, []Credential{{Source: "authorization", Header: "authorization", Secret: "sk-test-openai-0001"}}, r.Credentials)
			require.Equal(t, "/v1/chat/completions", r.Path)
			require.Equal(t, "api.openai.com", r.Host)
			require.Equal(t, "POST", r.Method)
			require.Equal(t, "2995731597869652434", r.StreamID)
			require.Equal(t, "0b9d2c1e-7c55-4f3a-9a8e-fa04256f19d2", r.RequestID)
			require.Equal(t, int64(256), r.OutputBound(16384))
			require.Equal(t, compactBound(t, fixtureBody(t, "openai_chat"))+requestOverhead+2*messageOverhead, r.InputTokens,
				"the body as compact JSON with weighted strings, plus the chat-format overheads")
		}},
		{"openai_chat_stream", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Equal(t, "openai", r.Provider) // from context_extensions
			require.Equal(t, pricing.FlavorChat, r.Flavor)
			require.True(t, r.Stream)
			require.True(t, r.StreamUsage)
			require.Equal(t, int64(1024), r.OutputCap)
			require.Equal(t, int64(2), r.Choices)
			require.Equal(t, int64(2048), r.OutputBound(32768))
			require.Equal(t, int64(1), r.Images)
			require.GreaterOrEqual(t, r.InputTokens, int64(imageTokensOpenAI)) // one image at OpenAI's maximum
			require.Less(t, r.InputTokens, int64(imageTokensOpenAI+600))
			require.Equal(t, "sk-test-openai-0002", r.Credentials[0].Secret) // lower-case scheme
			require.Equal(t, []string{"route:openai-chat"}, r.Subjects)
		}},
		{"openai_completions", func(t *testing.T, r Request) {
			require.Equal(t, pricing.FlavorCompletions, r.Flavor)
			require.Equal(t, int64(64), r.OutputCap)
			require.Equal(t, int64(6), r.Choices) // best_of 3 x 2 prompts
		}},
		{"openai_responses", func(t *testing.T, r Request) {
			require.Equal(t, pricing.FlavorResponses, r.Flavor)
			require.Equal(t, "gpt-5", r.Model)
			require.Equal(t, int64(4000), r.OutputCap)
			require.True(t, r.ExternalInput) // web_search tool
		}},
		{"openai_embeddings", func(t *testing.T, r Request) {
			require.Equal(t, pricing.FlavorEmbeddings, r.Flavor)
			require.Equal(t, int64(7), r.InputTokens) // token arrays count exactly
			require.False(t, r.HasOutputCap)
			require.Equal(t, int64(0), r.OutputBound(8192))
		}},
		{"anthropic_messages", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Equal(t, "anthropic", r.Provider)
			require.Equal(t, pricing.FlavorAnthropic, r.Flavor)
			require.Equal(t, "claude-sonnet-4-5", r.Model)
			require.Equal(t, int64(2048), r.OutputCap)
			require.Equal(t, []Credential{{Source: "x-api-key", Header: "x-api-key", Secret: "sk-ant-test-0001"}}, r.Credentials)
			// image maximum + tool-use system prompt + text
			require.Equal(t, int64(1), r.Images)
			require.GreaterOrEqual(t, r.InputTokens, int64(imageTokensAnthropic+anthropicToolsOH))
			require.False(t, r.ExternalInput)
		}},
		{"anthropic_messages_stream", func(t *testing.T, r Request) {
			require.True(t, r.Stream)
			require.Equal(t, "claude-haiku-4-5", r.Model)
			require.Equal(t, int64(512), r.OutputCap)
		}},
		{"anthropic_count_tokens", func(t *testing.T, r Request) {
			require.False(t, r.Billable)
			require.False(t, r.Unpriced)
			require.Equal(t, "anthropic", r.Provider)
			require.Equal(t, int64(0), r.InputTokens)
		}},
		{"gemini_generate", func(t *testing.T, r Request) {
			require.Equal(t, "google", r.Provider)
			require.Equal(t, pricing.FlavorGemini, r.Flavor)
			require.Equal(t, "gemini-2.5-flash", r.Model)
			require.False(t, r.Stream)
			require.Equal(t, int64(800), r.OutputCap)
			require.Equal(t, int64(1), r.Images)
			require.True(t, r.ExternalInput, "Gemini 2.x documents no per-image maximum")
			require.Equal(t, "x-goog-api-key", r.Credentials[0].Source)
		}},
		{"gemini_stream", func(t *testing.T, r Request) {
			require.Equal(t, "gemini-2.5-pro", r.Model)
			require.True(t, r.Stream)
			require.Equal(t, int64(100), r.OutputCap) // snake_case generation_config
			require.Equal(t, int64(2), r.Choices)
			require.True(t, r.ExternalInput) // googleSearch
			require.Equal(t, []Credential{{Source: "query:key", Secret: "AIza-test-0002"}}, r.Credentials)
			require.Equal(t, "/v1beta/models/gemini-2.5-pro:streamGenerateContent", r.Path)
		}},
		{"vertex_generate", func(t *testing.T, r Request) {
			require.Equal(t, "google", r.Provider)
			require.Equal(t, "gemini-2.0-flash-001", r.Model)
			require.Equal(t, int64(50), r.OutputCap)
		}},
		{"azure_chat_deployment", func(t *testing.T, r Request) {
			require.Equal(t, "azure", r.Provider)
			require.Equal(t, pricing.FlavorChat, r.Flavor)
			require.Equal(t, "gpt4o-prod", r.Model)
			require.Equal(t, "api-key", r.Credentials[0].Source)
		}},
		{"selfhosted_vllm_chat", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Equal(t, "", r.Provider)
			require.Equal(t, pricing.FlavorChat, r.Flavor)
			require.Equal(t, "meta-llama/Llama-3.1-8B-Instruct", r.Model)
			require.Nil(t, r.Credentials)
		}},
		{"partial_body", func(t *testing.T, r Request) {
			require.True(t, r.Truncated)
			require.NoError(t, r.BodyError) // cut JSON is expected
			require.Equal(t, "gpt-4o", r.Model)
			require.Equal(t, int64(500), r.OutputCap)
			require.Equal(t, int64(3<<20), r.ContentLength)
			require.GreaterOrEqual(t, r.InputTokens, (int64(3<<20)-int64(r.BodyBytes))*maxWeightPerByte)
			require.True(t, r.ExternalInput, "the missing part may hold media")
		}},
		{"mtls_principal", func(t *testing.T, r Request) {
			require.Equal(t, "spiffe://cluster.local/ns/app/sa/web", r.Principal)
			require.Equal(t, []string{"workload:spiffe://cluster.local/ns/app/sa/web", "namespace:app"}, r.Subjects)
			require.Equal(t, "gpt-4o-mini", r.Model) // body (string form) read
			require.Equal(t, int64(16), r.OutputCap)
		}},
		{"jwt_metadata", func(t *testing.T, r Request) {
			require.Equal(t, []string{"user:alice", "team:ml", "team:billing", "org:42"}, r.Subjects)
			require.Empty(t, r.SubjectErrors)
			require.False(t, r.HasOutputCap)
		}},
		{"route_context", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Equal(t, "", r.Provider)
			require.Equal(t, pricing.FlavorChat, r.Flavor) // openai-compatible refined by the path
			require.Equal(t, "ollama", r.Route.Route)
			require.Equal(t, []string{"self-hosted", "gpu", "eu"}, r.Route.Tags) // route metadata wins
			require.Equal(t, FailureOpen, r.Route.FailurePolicy)
			require.Equal(t, "team:research", r.Route.BudgetSubject)
			require.Equal(t, "openai-compatible", r.Route.Raw["api_flavor"])
			require.Equal(t, []string{"route:ollama", "tag:self-hosted", "tag:gpu", "tag:eu", "team:research"}, r.Subjects)
			require.NoError(t, r.RouteError)
		}},
		{"route_flavor_unknown_path", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Equal(t, pricing.FlavorOpenAICompatible, r.Flavor)
			require.Equal(t, "self-hosted", r.Provider)
			require.Equal(t, "tgi", r.Model)
			require.Positive(t, r.InputTokens)
		}},
		{"get_models", func(t *testing.T, r Request) {
			require.False(t, r.Billable)
			require.Equal(t, pricing.Flavor(""), r.Flavor, "no flavour")
			require.Equal(t, int64(-1), r.ContentLength)
			require.Len(t, r.Credentials, 1)
		}},
		{"garbage_body", func(t *testing.T, r Request) {
			require.True(t, r.Billable)
			require.Error(t, r.BodyError)
			require.Positive(t, r.InputTokens)
		}},
		{"huge_max_tokens", func(t *testing.T, r Request) {
			require.EqualError(t, r.CapError, "invalid max_tokens: 1e309: must be an integer")
			require.False(t, r.HasOutputCap)
			require.NoError(t, r.BodyError)
		}},
		{"raw_headers", func(t *testing.T, r Request) {
			require.Equal(t, pricing.FlavorEmbeddings, r.Flavor)
			require.Equal(t, "text-embedding-3-large", r.Model)
			require.Equal(t, []Credential{{Source: "authorization", Header: "authorization", Secret: "sk-test-openai-0010"}}, r.Credentials)
			require.Equal(t, "0b9d2c1e-7c55-4f3a-9a8e-6791ecd9c920", r.RequestID) // read from header_map
		}},
	}
	for _, tt := range tests {
		t.Run(camel(tt.fixture), func(t *testing.T) {
			t.Parallel()
			r := Parse(loadFixture(t, tt.fixture), fullConfig)
			tt.check(t, r)
		})
	}
}

// camel turns a fixture name into a CamelCase subtest name.
func camel(s string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(s, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}
