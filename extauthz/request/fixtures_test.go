package request

import (
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json CheckRequest fixtures from fixtureSpecs")

// fixture describes one CheckRequest the way Envoy builds it (shared reference envoy.md
// section 2): pseudo-headers and lower-cased keys in headers, body in raw_body
// (pack_as_bytes: true) unless stringBody, x-envoy-auth-partial-body whenever a body is
// attached, content-length as the client sent it.
type fixture struct {
	method, host, path string
	headers            map[string]string // added to the defaults; "" deletes a default
	body               string
	stringBody         bool   // pack_as_bytes: false
	partial            bool   // x-envoy-auth-partial-body: true
	contentLength      int    // 0: len(body); -1: no header
	principal          string // source.principal
	contextExtensions  map[string]string
	routeMetadata      map[string]any // route_metadata_context.filter_metadata["purser"]
	jwtPayload         map[string]any // metadata_context.filter_metadata[jwt_authn]["jwt_payload"]
	rawHeaders         [][2]string    // encode_raw_headers: header_map instead of headers
}

const tinyPNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

// fixtureSpecs are the shared fixtures, by file name (without .json).
var fixtureSpecs = map[string]fixture{
	"openai_chat": {
		method: "POST", host: "api.openai.com", path: "/v1/chat/completions",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0001"},
		body: `{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a terse assistant."},` +
			`{"role":"user","content":"Summarise the plot of Hamlet in two sentences."}],"max_tokens":256,"temperature":0.2}`,
	},
	"openai_chat_stream": {
		method: "POST", host: "llm-gw.internal", path: "/openai/v1/chat/completions",
		headers: map[string]string{"authorization": "bearer sk-test-openai-0002"},
		body: `{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":1024,"n":2,` +
			`"messages":[{"role":"developer","content":"Answer in French."},{"role":"user","content":[{"type":"text","text":"Describe this picture."},` +
			`{"type":"image_url","image_url":{"url":"data:image/png;base64,` + tinyPNG + `","detail":"high"}}]}],` +
			`"tools":[{"type":"function","function":{"name":"lookup","description":"Look a word up","parameters":{"type":"object","properties":{"word":{"type":"string"}},"required":["word"]}}}]}`,
		contextExtensions: map[string]string{"provider": "openai", "route": "openai-chat"},
	},
	"openai_completions": {
		method: "POST", host: "api.openai.com", path: "/v1/completions",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0003"},
		body:    `{"model":"gpt-3.5-turbo-instruct","prompt":["Once upon a time","In a galaxy far away"],"max_tokens":64,"n":3,"best_of":3}`,
	},
	"openai_responses": {
		method: "POST", host: "api.openai.com", path: "/v1/responses",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0004"},
		body: `{"model":"gpt-5","instructions":"Be precise.","input":[{"role":"user","content":[{"type":"input_text","text":"What changed in Go 1.26?"}]}],` +
			`"tools":[{"type":"web_search"},{"type":"function","name":"get_release","parameters":{"type":"object","properties":{"version":{"type":"string"}}}}],` +
			`"max_output_tokens":4000,"stream":false}`,
	},
	"openai_embeddings": {
		method: "POST", host: "api.openai.com", path: "/v1/embeddings",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0005"},
		body:    `{"model":"text-embedding-3-small","input":[[9906,1917,0],[40,1093,26340,13]],"encoding_format":"float"}`,
	},
	"anthropic_messages": {
		method: "POST", host: "api.anthropic.com", path: "/v1/messages",
		headers: map[string]string{"x-api-key": "sk-ant-test-0001", "anthropic-version": "2023-06-01"},
		body: `{"model":"claude-sonnet-4-5","max_tokens":2048,"system":[{"type":"text","text":"You review code.","cache_control":{"type":"ephemeral"}}],` +
			`"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + tinyPNG + `"}},` +
			`{"type":"text","text":"What does this diagram show?"}]}],` +
			`"tools":[{"name":"get_file","description":"Read a file","input_schema":{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}}]}`,
	},
	"anthropic_messages_stream": {
		method: "POST", host: "api.anthropic.com", path: "/v1/messages",
		headers: map[string]string{"x-api-key": "sk-ant-test-0002", "anthropic-version": "2023-06-01"},
		body:    `{"model":"claude-haiku-4-5","max_tokens":512,"stream":true,"system":"Be brief.","messages":[{"role":"user","content":"Hello, Claude"}]}`,
	},
	"anthropic_count_tokens": {
		method: "POST", host: "api.anthropic.com", path: "/v1/messages/count_tokens",
		headers: map[string]string{"x-api-key": "sk-ant-test-0003", "anthropic-version": "2023-06-01"},
		body:    `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"How many tokens is this?"}]}`,
	},
	"gemini_generate": {
		method: "POST", host: "generativelanguage.googleapis.com", path: "/v1beta/models/gemini-2.5-flash:generateContent",
		headers: map[string]string{"x-goog-api-key": "AIza-test-0001"},
		body: `{"systemInstruction":{"parts":[{"text":"You are a botanist."}]},"contents":[{"role":"user","parts":[{"text":"Which plant is this?"},` +
			`{"inlineData":{"mimeType":"image/png","data":"` + tinyPNG + `"}}]}],"generationConfig":{"maxOutputTokens":800,"temperature":0.4}}`,
	},
	"gemini_stream": {
		method: "POST", host: "generativelanguage.googleapis.com", path: "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=AIza-test-0002",
		body: `{"contents":[{"role":"user","parts":[{"text":"Write a haiku about budgets."}]}],"generation_config":{"max_output_tokens":100,"candidate_count":2},` +
			`"tools":[{"googleSearch":{}}]}`,
	},
	"vertex_generate": {
		method: "POST", host: "us-central1-aiplatform.googleapis.com",
		path:    "/v1/projects/acme-ml/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:generateContent",
		headers: map[string]string{"authorization": "Bearer ya29.test-vertex-0001"},
		body:    `{"contents":[{"role":"user","parts":[{"text":"Translate to German: good morning"}]}],"generationConfig":{"maxOutputTokens":50}}`,
	},
	"azure_chat_deployment": {
		method: "POST", host: "acme-prod.openai.azure.com", path: "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
		headers: map[string]string{"api-key": "azure-test-key-0001"},
		body:    `{"messages":[{"role":"user","content":"Draft a polite reminder email."}],"max_tokens":300}`,
	},
	"selfhosted_vllm_chat": {
		method: "POST", host: "vllm.ml.svc.cluster.local:8000", path: "/v1/chat/completions",
		body: `{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"List three prime numbers."}],"max_tokens":32}`,
	},
	"partial_body": {
		method: "POST", host: "api.openai.com", path: "/v1/chat/completions",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0006"},
		body: `{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"Please review the following log excerpt: ` +
			strings.Repeat("2026-11-02T10:00:00Z INFO worker started job=42 queue=default ", 30),
		partial: true, contentLength: 3 << 20,
	},
	"mtls_principal": {
		method: "POST", host: "llm-gw.internal", path: "/v1/chat/completions",
		principal:         "spiffe://cluster.local/ns/app/sa/web",
		stringBody:        true,
		body:              `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}],"max_tokens":16}`,
		contextExtensions: map[string]string{"provider": "openai"},
	},
	"jwt_metadata": {
		method: "POST", host: "llm-gw.internal", path: "/v1/chat/completions",
		headers: map[string]string{"authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.test-jwt"},
		body:    `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`,
		jwtPayload: map[string]any{"iss": "https://idp.example.com", "sub": "alice", "groups": []any{"ml", "billing"}, "org_id": 42.0,
			"exp": 1893456000.0},
	},
	"route_context": {
		method: "POST", host: "ollama.internal:11434", path: "/v1/chat/completions",
		body: `{"model":"qwen2.5:7b","messages":[{"role":"user","content":"Bonjour"}]}`,
		contextExtensions: map[string]string{"route": "ollama-legacy", "tags": "self-hosted, gpu", "budget_subject": "team:research",
			"failure_policy": "open"},
		routeMetadata: map[string]any{"route": "ollama", "api_flavor": "openai-compatible", "tags": []any{"self-hosted", "gpu", "eu"}},
	},
	"route_flavor_unknown_path": {
		method: "POST", host: "tgi.internal", path: "/generate",
		body:          `{"model":"tgi","inputs":"Tell me a joke","parameters":{"max_new_tokens":64}}`,
		routeMetadata: map[string]any{"api_flavor": "openai-compatible", "provider": "self-hosted"},
	},
	"get_models": {
		method: "GET", host: "api.openai.com", path: "/v1/models",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0007", "content-type": ""},
	},
	"garbage_body": {
		method: "POST", host: "api.openai.com", path: "/v1/chat/completions",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0008"},
		body:    "\x00\xff{\"model\": gpt-4o, \"messages\": [\xc3\x28]}",
	},
	"huge_max_tokens": {
		method: "POST", host: "api.openai.com", path: "/v1/chat/completions",
		headers: map[string]string{"authorization": "Bearer sk-test-openai-0009"},
		body:    `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":1e309}`,
	},
	"raw_headers": {
		method: "POST", host: "api.openai.com", path: "/v1/embeddings",
		rawHeaders: [][2]string{{"x-forwarded-for", "10.0.0.1"}, {"x-forwarded-for", "10.0.0.2"}, {"Authorization", "Bearer sk-test-openai-0010"}},
		body:       `{"model":"text-embedding-3-large","input":"The quick brown fox"}`,
	},
}

// build returns the CheckRequest of a fixture.
func (f fixture) build(name string) *authv3.CheckRequest {
	h := map[string]string{
		":authority":        f.host,
		":method":           f.method,
		":path":             f.path,
		":scheme":           "https",
		"user-agent":        "purser-fixtures/1.0",
		"accept":            "application/json",
		"x-forwarded-proto": "https",
		"x-request-id":      fmt.Sprintf("0b9d2c1e-7c55-4f3a-9a8e-%012x", nameHash(name)&0xffffffffffff),
	}
	if f.body != "" {
		h["content-type"] = "application/json"
		h["x-envoy-auth-partial-body"] = strconv.FormatBool(f.partial)
		switch {
		case f.contentLength == 0:
			h["content-length"] = strconv.Itoa(len(f.body))
		case f.contentLength > 0:
			h["content-length"] = strconv.Itoa(f.contentLength)
		}
	}
	for k, v := range f.headers {
		if v == "" {
			delete(h, k)
			continue
		}
		h[k] = v
	}
	httpReq := &authv3.AttributeContext_HttpRequest{
		Id:       strconv.FormatUint(nameHash(name), 10),
		Method:   f.method,
		Path:     f.path,
		Host:     f.host,
		Scheme:   "https",
		Protocol: "HTTP/1.1",
		Size:     int64(len(f.body)),
		Headers:  h,
	}
	if f.rawHeaders != nil {
		hm := &corev3.HeaderMap{}
		keys := make([]string, 0, len(h))
		for k := range h {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(h[k])})
		}
		for _, kv := range f.rawHeaders {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])})
		}
		httpReq.Headers, httpReq.HeaderMap = nil, hm
	}
	if f.stringBody {
		httpReq.Body = f.body
	} else if f.body != "" {
		httpReq.RawBody = []byte(f.body)
	}
	attrs := &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   socket("10.1.2.3", 51514),
			Principal: f.principal,
		},
		Destination: &authv3.AttributeContext_Peer{Address: socket("10.1.9.9", 10000)},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Date(2026, 11, 2, 10, 0, 0, 123e6, time.UTC)),
			Http: httpReq,
		},
		ContextExtensions: f.contextExtensions,
	}
	if f.routeMetadata != nil {
		attrs.RouteMetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			RouteMetadataNamespace: mustStruct(f.routeMetadata)}}
	}
	if f.jwtPayload != nil {
		attrs.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			DefaultJWTNamespace: mustStruct(map[string]any{"jwt_payload": f.jwtPayload})}}
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

// nameHash gives each fixture its own stream id and x-request-id.
func nameHash(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

func socket(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

// loadFixture reads testdata/<name>.json.
func loadFixture(tb testing.TB, name string) *authv3.CheckRequest {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	require.NoError(tb, err)
	var req authv3.CheckRequest
	require.NoError(tb, protojson.Unmarshal(b, &req), name)
	return &req
}

// TestFixtures checks that testdata/*.json are the CheckRequests of fixtureSpecs; with
// -update it rewrites them.
func TestFixtures(t *testing.T) {
	for name, f := range fixtureSpecs {
		want := f.build(name)
		file := filepath.Join("testdata", name+".json")
		if *update {
			b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(want)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(file, append(b, '\n'), 0o644))
			continue
		}
		got := loadFixture(t, name)
		require.True(t, proto.Equal(want, got), "%s differs from fixtureSpecs; run go test -run TestFixtures -update", file)
	}
}
