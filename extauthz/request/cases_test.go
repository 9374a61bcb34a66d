package request

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget"
)

func TestParse_Recognition(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, method, host, path string
		billable, unpriced       bool
		provider, flavor, model  string
		stream                   bool
	}{
		{"OpenAIChat", "POST", "api.openai.com", "/v1/chat/completions", true, false, "openai", "chat", "m", false},
		{"GatewayPrefix", "POST", "gw", "/openai/v1/chat/completions", true, false, "", "chat", "m", false},
		{"OpenRouterPrefix", "POST", "openrouter.ai", "/api/v1/chat/completions", true, false, "", "chat", "m", false},
		{"LowerCaseMethod", "post", "api.openai.com", "/v1/chat/completions", true, false, "openai", "chat", "m", false},
		{"MessyPath", "POST", "api.openai.com", "//v1/./CHAT//completions/", true, false, "openai", "chat", "m", false},
		{"EncodedSlash", "POST", "api.openai.com", "/v1/chat%2Fcompletions", true, false, "openai", "chat", "m", false},
		{"Completions", "POST", "localhost:8000", "/v1/completions", true, false, "", "completions", "m", false},
		{"Responses", "POST", "api.openai.com", "/v1/responses", true, false, "openai", "responses", "m", false},
		{"ResponsesInputTokens", "POST", "api.openai.com", "/v1/responses/input_tokens", false, false, "openai", "", "", false},
		{"Embeddings", "POST", "api.openai.com", "/v1/embeddings", true, false, "openai", "embeddings", "m", false},
		{"AzureDeployment", "POST", "x.openai.azure.com", "/openai/deployments/dep-1/embeddings", true, false, "azure", "embeddings", "m", false},
		{"AzureV1", "POST", "x.openai.azure.com", "/openai/v1/responses", true, false, "azure", "responses", "m", false},
		{"AzureByPathShape", "POST", "gw", "/openai/deployments/dep-1/chat/completions", true, false, "azure", "chat", "m", false},
		{"AnthropicMessages", "POST", "gw", "/v1/messages", true, false, "anthropic", "anthropic", "m", false},
		{"AnthropicCountTokens", "POST", "api.anthropic.com", "/v1/messages/count_tokens", false, false, "anthropic", "", "", false},
		{"AnthropicBatches", "POST", "api.anthropic.com", "/v1/messages/batches", false, true, "anthropic", "", "", false},
		{"AssistantsMessageIsFree", "POST", "api.openai.com", "/v1/threads/t1/messages", false, false, "openai", "", "", false},
		{"GeminiV1", "POST", "generativelanguage.googleapis.com", "/v1/models/gemini-pro:generateContent", true, false, "google", "gemini", "gemini-pro", false},
		{"GeminiByPathShape", "POST", "gw", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", true, false, "google", "gemini", "gemini-2.5-flash", true},
		{"GeminiAltSSE", "POST", "gw", "/v1beta/models/g:generateContent?alt=sse", true, false, "google", "gemini", "g", true},
		{"GeminiCountTokens", "POST", "gw", "/v1beta/models/g:countTokens", false, false, "google", "", "", false},
		{"GeminiEmbed", "POST", "gw", "/v1beta/models/text-embedding-004:embedContent", true, false, "google", "gemini-embeddings", "text-embedding-004", false},
		{"GeminiImagen", "POST", "gw", "/v1beta/models/imagen-4:predict", false, true, "google", "", "", false},
		{"VertexAnthropic", "POST", "us-east5-aiplatform.googleapis.com", "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict", true, false, "google", "anthropic", "claude-sonnet-4@20250514", true},
		{"ListModels", "GET", "api.openai.com", "/v1/models", false, false, "openai", "", "", false},
		{"GetModel", "GET", "api.openai.com", "/v1/models/gpt-4o", false, false, "openai", "", "", false},
		{"GetOnBillablePath", "GET", "api.openai.com", "/v1/chat/completions", false, false, "openai", "", "", false},
		{"Health", "GET", "vllm:8000", "/health", false, false, "", "", "", false},
		{"UnknownPost", "POST", "vllm:8000", "/v1/files", false, false, "", "", "", false},
		{"Images", "POST", "api.openai.com", "/v1/images/generations", false, true, "openai", "", "", false},
		{"OllamaNative", "POST", "ollama:11434", "/api/chat", false, true, "", "", "", false},
		{"HostWithPortAndDot", "POST", "API.OpenAI.com.:443", "/v1/chat/completions", true, false, "openai", "chat", "m", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := Parse(checkRequest(tt.method, tt.host, tt.path, `{"model":"m","messages":[{"role":"user","content":"x"}],"input":"x","contents":[{"parts":[{"text":"x"}]}],"max_tokens":5}`, nil), nil)
			require.Equal(t, tt.billable, r.Billable, "billable")
			require.Equal(t, tt.unpriced, r.Unpriced, "unpriced")
			require.Equal(t, tt.provider, r.Provider, "provider")
			require.Equal(t, tt.flavor, string(r.Flavor), "flavor")
			require.Equal(t, tt.model, r.Model, "model")
			require.Equal(t, tt.stream, r.Stream, "stream")
			if tt.billable {
				require.NoError(t, r.BodyError)
				require.Positive(t, r.InputTokens)
			} else {
				require.Zero(t, r.InputTokens)
			}
		})
	}
}

func TestParse_Body(t *testing.T) {
	t.Parallel()
	chat := func(body string) Request {
		return Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", body, nil), nil)
	}
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	t.Run("CapVariants", func(t *testing.T) {
		t.Parallel()
		for raw, want := range map[string]string{
			`1e309`:               "invalid max_tokens: 1e309: must be an integer",
			`-5`:                  "invalid max_tokens: -5: must be a positive integer",
			`"12"`:                "invalid max_tokens: a string, must be an integer",
			`1.5`:                 "invalid max_tokens: 1.5: must be an integer",
			`9223372036854775808`: "invalid max_tokens: 9223372036854775808: too large",
			`0`:                   "invalid max_tokens: 0: must be a positive integer",
			`true`:                "invalid max_tokens: must be an integer",
			`9223372036854775807`: "",
			`null`:                "",
		} {
			r := chat(`{"model":"m",` + msgs + `,"max_tokens":` + raw + `}`)
			require.NoError(t, r.BodyError, raw)
			if want == "" {
				require.NoError(t, r.CapError, raw)
				continue
			}
			require.EqualError(t, r.CapError, want, raw)
			require.False(t, r.HasOutputCap, raw)
		}
	})
	t.Run("LargerOfTwoCaps", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m",` + msgs + `,"max_tokens":10,"max_completion_tokens":900}`)
		require.Equal(t, int64(900), r.OutputCap)
	})
	t.Run("CapNotHonouredByFlavour", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m",` + msgs + `,"max_output_tokens":10}`)
		require.False(t, r.HasOutputCap) // chat ignores max_output_tokens: no cap, not 10
	})
	t.Run("CaseVariantKeyIgnored", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m",` + msgs + `,"max_tokens":9000,"MAX_TOKENS":1}`)
		require.Equal(t, int64(9000), r.OutputCap)
	})
	t.Run("EscapedKeyMatched", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m",` + msgs + `,"max_tok\u0065ns":77}`)
		require.Equal(t, int64(77), r.OutputCap)
	})
	t.Run("DuplicateKey", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m",` + msgs + `,"max_tokens":1,"max_t\u006fkens":9000}`)
		require.EqualError(t, r.BodyError, `duplicate key "max_tokens"`)
		require.Positive(t, r.InputTokens)
	})
	t.Run("DeepNesting", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m","x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`)
		require.ErrorContains(t, r.BodyError, "nesting deeper than 256")
		require.Positive(t, r.InputTokens)
	})
	t.Run("EmptyBody", func(t *testing.T) {
		t.Parallel()
		r := chat("")
		require.ErrorIs(t, r.BodyError, errEmptyBody)
	})
	t.Run("NoBodyBuffered", func(t *testing.T) {
		t.Parallel()
		r := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", "", map[string]string{"content-length": "30000"}), nil)
		require.True(t, r.Truncated)
		require.NoError(t, r.BodyError)
		require.GreaterOrEqual(t, r.InputTokens, int64(10000))
	})
	t.Run("Gzip", func(t *testing.T) {
		t.Parallel()
		r := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", "\x1f\x8b\x08", map[string]string{"content-encoding": "gzip"}), nil)
		require.EqualError(t, r.BodyError, `unsupported content-encoding "gzip"`)
		require.True(t, r.ExternalInput, "a compressed body bounds nothing")
	})
	t.Run("TrailingData", func(t *testing.T) {
		t.Parallel()
		require.Error(t, chat(`{"model":"m"} {}`).BodyError)
	})
	t.Run("TruncatedWithoutHeaderIsError", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("POST", "api.openai.com", "/v1/chat/completions", `{"model":"m","messages":[`, nil)
		require.ErrorIs(t, Parse(req, nil).BodyError, errJSONEOF)
	})
	t.Run("TruncatedInsideCap", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("POST", "api.openai.com", "/v1/chat/completions", `{"model":"m","max_tokens":12`,
			map[string]string{"x-envoy-auth-partial-body": "true", "content-length": "5000"})
		r := Parse(req, nil)
		require.NoError(t, r.BodyError)
		require.False(t, r.HasOutputCap) // 12 might be 1200
		require.Equal(t, "m", r.Model)
		require.GreaterOrEqual(t, r.InputTokens, int64(5000-r.BodyBytes)*maxWeightPerByte)
		require.True(t, r.ExternalInput)
	})
	t.Run("InvalidUTF8Counted", func(t *testing.T) {
		t.Parallel()
		r := chat("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xfd\"}]}")
		require.NoError(t, r.BodyError)
		require.Positive(t, r.InputTokens)
	})
	t.Run("TextCannotPoseAsImage", func(t *testing.T) {
		t.Parallel()
		long := "data:image/png;base64," + strings.Repeat("QUJD", 5000)
		r := chat(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"` + long + `"}]}]}`)
		require.Zero(t, r.Images, "text, not an image")
		require.GreaterOrEqual(t, r.InputTokens, int64(len(long)), "counted as text")
	})
	t.Run("InlineAudioIsUnbounded", func(t *testing.T) {
		t.Parallel()
		// Compressed audio of silence is tiny for its duration: its size bounds nothing.
		audio := strings.Repeat("UklGRiQA", 2000)
		r := chat(`{"model":"gpt-4o-audio-preview","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"` + audio + `","format":"wav"}}]}]}`)
		require.True(t, r.ExternalInput)
		require.Less(t, r.InputTokens, int64(200), "the base64 is not counted as text")
	})
	t.Run("DocumentsByKind", func(t *testing.T) {
		t.Parallel()
		// Text documents are bounded by their decoded size (base64: maxWeightPerByte per
		// decoded byte); PDFs and other binary documents are not bounded by their size at
		// all (compressed streams): ExternalInput, whichever member comes first.
		prose := strings.Repeat("The harbour town woke slowly that autumn, and the baker pulled the first loaves from the oven. ", 1200)
		b64 := base64.StdEncoding.EncodeToString([]byte(prose))
		word := strings.Repeat("Lorem", 20000) // text without spaces passes for base64
		for name, c := range map[string]struct{ path, body, text string }{
			"GeminiInlineText": {"/v1beta/models/gemini-2.5-flash:generateContent",
				`{"contents":[{"parts":[{"inlineData":{"data":"` + b64 + `","mimeType":"text/plain"}}]}]}`, prose},
			"GeminiInlineJSON": {"/v1beta/models/gemini-2.5-flash:generateContent",
				`{"contents":[{"parts":[{"inlineData":{"mimeType":"application/json; charset=utf-8","data":"` + b64 + `"}}]}]}`, prose},
			"AnthropicTextSource": {"/v1/messages",
				`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"` + word + `"}}]}]}`, word},
			"AnthropicPDF": {"/v1/messages",
				`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"` + b64 + `"}}]}]}`, ""},
			"OpenAIFileDataURL": {"/v1/chat/completions",
				`{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"filename":"notes.txt","file_data":"data:text/plain;base64,` + b64 + `"}}]}]}`, prose},
			"OpenAIPDFDataURL": {"/v1/responses",
				`{"model":"m","input":[{"role":"user","content":[{"type":"input_file","filename":"a.pdf","file_data":"data:application/pdf;base64,` + b64 + `"}]}]}`, ""},
			"DataURLWithoutType": {"/v1/chat/completions", // RFC 2397: text/plain
				`{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_data":"data:;base64,` + b64 + `"}}]}]}`, prose},
		} {
			r := Parse(checkRequest("POST", "h", c.path, c.body, nil), nil)
			require.NoError(t, r.BodyError, name)
			if c.text == "" {
				require.True(t, r.ExternalInput, name)
				continue
			}
			require.False(t, r.ExternalInput, name)
			require.GreaterOrEqual(t, r.InputTokens, TextBound(c.text), name)
		}
	})
	t.Run("ImageURLReference", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}`)
		require.Equal(t, int64(1), r.Images)
		require.Greater(t, r.InputTokens, int64(imageTokensOpenAI))
		require.False(t, r.ExternalInput)
	})
	t.Run("FileReferenceIsExternal", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-abc"}}]}]}`)
		require.True(t, r.ExternalInput)
	})
	t.Run("PreviousResponseIsExternal", func(t *testing.T) {
		t.Parallel()
		r := Parse(checkRequest("POST", "api.openai.com", "/v1/responses", `{"model":"m","input":"and then?","previous_response_id":"resp_1"}`, nil), nil)
		require.True(t, r.ExternalInput)
	})
	t.Run("ModelTooLong", func(t *testing.T) {
		t.Parallel()
		r := chat(`{"model":"` + strings.Repeat("m", 300) + `",` + msgs + `}`)
		require.ErrorContains(t, r.BodyError, "model name longer than 256 bytes")
		require.Empty(t, r.Model)
	})
	t.Run("ConfigAllowances", func(t *testing.T) {
		t.Parallel()
		body := `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}`
		asserted := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", body, nil), &Config{ImageTokens: 100})
		documented := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", body, nil), nil)
		require.Equal(t, documented.InputTokens-imageTokensGPT4oMini+100, asserted.InputTokens,
			"an unknown model on api.openai.com costs OpenAI's largest per-image maximum unless the operator asserts less")
	})
}

func TestParse_Headers(t *testing.T) {
	t.Parallel()
	t.Run("MixedCaseMap", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("POST", "api.openai.com", "/v1/chat/completions", `{"model":"m","messages":[]}`,
			map[string]string{"X-Request-ID": "abc", "x-request-id": "", "Authorization": "Bearer k1"})
		r := Parse(req, nil)
		require.Equal(t, "abc", r.RequestID)
		require.Equal(t, "k1", r.Credentials[0].Secret)
	})
	t.Run("PseudoHeadersOnly", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("POST", "api.openai.com", "/v1/chat/completions?x=1", `{"model":"m"}`, nil)
		h := req.GetAttributes().GetRequest().GetHttp()
		h.Method, h.Path, h.Host = "", "", ""
		r := Parse(req, nil)
		require.Equal(t, "POST", r.Method)
		require.Equal(t, "/v1/chat/completions", r.Path)
		require.Equal(t, "api.openai.com", r.Host)
		require.True(t, r.Billable)
	})
	t.Run("HeaderMapDuplicatesJoined", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("POST", "h", "/v1/chat/completions", `{"model":"m"}`, nil)
		h := req.GetAttributes().GetRequest().GetHttp()
		h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "x-api-key", RawValue: []byte("k1")}, {Key: "X-Api-Key", RawValue: []byte("k2")}}}
		r := Parse(req, &Config{CredentialSources: []string{"x-api-key"}})
		require.Equal(t, "k1,k2", r.Credentials[0].Secret) // ambiguous: never validates
	})
	t.Run("CredentialOrder", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("POST", "h", "/v1/chat/completions?key=q%2Bk", `{}`,
			map[string]string{"authorization": "Basic dXNlcg==", "x-goog-api-key": "g", "api-key": "a"})
		r := Parse(req, &Config{CredentialSources: []string{"query:key", "x-goog-api-key", "authorization", "api-key"}})
		require.Equal(t, []Credential{{Source: "query:key", Secret: "q+k"}, {Source: "x-goog-api-key", Header: "x-goog-api-key", Secret: "g"},
			{Source: "api-key", Header: "api-key", Secret: "a"}}, r.Credentials) // Basic is not a bearer key
	})
	t.Run("QueryKeyOffByDefault", func(t *testing.T) {
		t.Parallel()
		r := Parse(checkRequest("POST", "h", "/v1beta/models/g:generateContent?key=k", `{}`, nil), nil)
		require.Empty(t, r.Credentials)
	})
}

func TestParse_Subjects(t *testing.T) {
	t.Parallel()
	withPrincipal := func(p string) *authv3.CheckRequest {
		req := checkRequest("GET", "h", "/", "", nil)
		req.Attributes.Source = &authv3.AttributeContext_Peer{Principal: p}
		return req
	}
	for p, want := range map[string][]string{
		"spiffe://cluster.local/ns/app/sa/web": {"workload:spiffe://cluster.local/ns/app/sa/web", "namespace:app"},
		"spiffe://example.org/payments":        {"workload:spiffe://example.org/payments"},
		"spiffe://Example.org/ns/a/sa/b":       nil, // upper-case trust domain
		"spiffe://td/ns//sa/b":                 nil, // empty segment
		"spiffe://td/ns/../sa/b":               nil,
		"web.example.com":                      nil, // DNS SAN: principal kept, no subject
	} {
		r := Parse(withPrincipal(p), nil)
		require.Equal(t, p, r.Principal)
		require.Equal(t, want, r.Subjects, p)
	}
	t.Run("TrustedHeadersOnlyWhenConfigured", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("GET", "h", "/", "", map[string]string{"x-tenant": "acme", "x-user": "bob\x01"})
		require.Empty(t, Parse(req, nil).Subjects)
		r := Parse(req, &Config{TrustedHeaders: []HeaderMapping{{Header: "x-tenant", Subject: "team"}, {Header: "x-user", Subject: "user"}}})
		require.Equal(t, []string{"team:acme"}, r.Subjects)
		require.Len(t, r.SubjectErrors, 1)
		require.ErrorContains(t, r.SubjectErrors[0], "header x-user")
	})
	t.Run("JWTPayloadKeyAndNested", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("GET", "h", "/", "", nil)
		payload, err := structpb.NewStruct(map[string]any{"realm_access": map[string]any{"roles": []any{"admin", ""}}, "sub": 1.5})
		require.NoError(t, err)
		req.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			"jwt": {Fields: map[string]*structpb.Value{"https://idp": structpb.NewStructValue(payload), "other": structpb.NewStringValue("x")}}}}
		cfg := &Config{JWT: JWTConfig{Namespace: "jwt", PayloadKey: "https://idp", Claims: []ClaimMapping{
			{Claim: "realm_access.roles", Subject: "team"}, {Claim: "sub", Subject: "user"}}}}
		r := Parse(req, cfg)
		require.Equal(t, []string{"team:admin"}, r.Subjects)
		require.Len(t, r.SubjectErrors, 2) // empty role, non-integer sub
	})
	t.Run("InvalidBudgetSubject", func(t *testing.T) {
		t.Parallel()
		req := checkRequest("GET", "h", "/", "", nil)
		req.Attributes.ContextExtensions = map[string]string{"budget_subject": "no-kind", "failure_policy": "sometimes", "api_flavor": "Bad Flavor"}
		r := Parse(req, nil)
		require.Empty(t, r.Subjects)
		require.Len(t, r.SubjectErrors, 1)
		require.Equal(t, FailureClosed, r.Route.FailurePolicy)
		require.ErrorContains(t, r.RouteError, `failure_policy "sometimes"`)
		require.ErrorContains(t, r.RouteError, `api_flavor "Bad Flavor"`)
	})
}

// TestParse_SubjectsUseTheOneValidator: every request-side source (trusted header, JWT
// claim, route context) is held to budget.ParseSubject, the rules of the admin API.
func TestParse_SubjectsUseTheOneValidator(t *testing.T) {
	t.Parallel()
	for value, valid := range map[string]bool{
		"acme":                   true,
		"alice@example.com":      true,
		"Jörg":                   true,
		"a,b":                    false, // subjects are joined with commas in metadata
		"a\u202eb":               false, // bidi override
		"a\u200db":               false, // zero-width joiner
		"Jörg Müller":            false, // white space
		"a b":                    false,
		strings.Repeat("a", 600): false, // over the 512-byte cap
	} {
		req := checkRequest("GET", "h", "/", "", map[string]string{"x-tenant": value})
		req.Attributes.ContextExtensions = map[string]string{"budget_subject": "team:" + value}
		payload, err := structpb.NewStruct(map[string]any{"sub": value})
		require.NoError(t, err)
		req.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			DefaultJWTNamespace: {Fields: map[string]*structpb.Value{"idp": structpb.NewStructValue(payload)}}}}
		r := Parse(req, &Config{TrustedHeaders: []HeaderMapping{{Header: "x-tenant", Subject: "org"}},
			JWT: JWTConfig{Claims: []ClaimMapping{{Claim: "sub", Subject: "user"}}}})
		_, err = budget.ParseSubject("team:" + value)
		require.Equal(t, valid, err == nil, "budget.ParseSubject agrees with the table for %q", value)
		if valid {
			require.ElementsMatch(t, []string{"org:" + value, "user:" + value, "team:" + value}, r.Subjects, "%q", value)
			require.Empty(t, r.SubjectErrors)
		} else {
			require.Empty(t, r.Subjects, "%q", value)
			require.Len(t, r.SubjectErrors, 3, "header, claim and route each rejected %q", value)
		}
	}
}

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	require.NoError(t, (*Config)(nil).Validate())
	require.NoError(t, (&Config{}).Validate())
	require.NoError(t, fullConfig.Validate())
	err := (&Config{
		CredentialSources: []string{"", "query:", "X-Api-Key", "api-key", "api-key"},
		JWT:               JWTConfig{Claims: []ClaimMapping{{Claim: "", Subject: "role"}}},
		TrustedHeaders:    []HeaderMapping{{Header: "api-key", Subject: "team"}, {Header: ":path", Subject: "x"}},
		ModelHeader:       "X-Model",
		ImageTokens:       -1,
	}).Validate()
	require.EqualError(t, err, strings.Join([]string{
		`credential_sources[0]: empty`,
		`credential_sources[1]: "query:": query parameter name must be 1-4096 characters of [A-Za-z0-9._~-]`,
		`credential_sources[2]: "X-Api-Key": not a lower-case header name`,
		`credential_sources[4]: "api-key" listed twice`,
		`jwt.claims[0].claim: must be 1-4096 bytes`,
		`jwt.claims[0].subject: unknown kind "role" (kinds: key, user, team, org, workload, namespace, tag, route, or the subject global)`,
		`trusted_headers[0].header: "api-key" carries credentials and cannot name a subject`,
		`trusted_headers[1].header: ":path": not a lower-case header name`,
		`trusted_headers[1].subject: unknown kind "x" (kinds: key, user, team, org, workload, namespace, tag, route, or the subject global)`,
		`model_header: "X-Model": not a lower-case header name`,
		`image_tokens: -1: must be between 0 (the model's documented maximum) and 1000000`,
	}, "\n"))
}

func TestRequest_Redaction(t *testing.T) {
	t.Parallel()
	const secret = "sk-live-SECRET-9f8e7d"
	const prompt = "my-confidential-prompt-text"
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + prompt + `"}],"max_tokens":"` + prompt + `"}`
	req := checkRequest("POST", "api.openai.com", "/v1/chat/completions?key="+secret, body,
		map[string]string{"authorization": "Bearer " + secret, "x-api-key": secret})
	r := Parse(req, &Config{CredentialSources: []string{"authorization", "x-api-key", "query:key"}})
	require.Len(t, r.Credentials, 3)
	require.Error(t, r.CapError)

	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("check", "request", r, "credential", r.Credentials[0])
	js, err := json.Marshal(r)
	require.NoError(t, err)
	for _, out := range []string{
		fmt.Sprintf("%v", r), fmt.Sprintf("%+v", r), fmt.Sprintf("%#v", r), fmt.Sprint(r), r.String(),
		fmt.Sprintf("%v %+v %#v", r.Credentials, r.Credentials[0], r.Credentials[1]),
		logs.String(), string(js),
	} {
		require.NotContains(t, out, secret)
		require.NotContains(t, out, prompt)
	}
	require.Contains(t, logs.String(), `"secret":"REDACTED"`)
	require.Contains(t, r.String(), "authorization:REDACTED")
}
