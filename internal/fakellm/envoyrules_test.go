package fakellm_test

// This file checks the shipped Envoy usage extraction against the fake's responses, which are
// shaped like the real APIs: the json_to_metadata and sse_to_metadata rules of envoy/envoy.yaml
// (applied by internal/envoysim's emulation of the two filters, the one the e2e suite runs), and the Lua
// script of envoy/envoy-lua.yaml (run in gopher-lua, a Lua 5.1 VM like Envoy's LuaJIT, with the
// body cut at every byte boundary). No Envoy binary is involved.

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/stretchr/testify/require"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/purser-dev/purser/envoy"
	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
)

func loadHCM(t *testing.T, file string) *hcmv3.HttpConnectionManager {
	t.Helper()
	b, err := envoy.Files.ReadFile(file)
	require.NoError(t, err)
	bs, err := envoysim.DecodeBootstrap(b)
	require.NoError(t, err)
	var h hcmv3.HttpConnectionManager
	require.NoError(t, bs.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&h))
	return &h
}

func loadLuaScript(t *testing.T) *lua.FunctionProto {
	t.Helper()
	var src string
	for _, f := range loadHCM(t, "envoy-lua.yaml").GetHttpFilters() {
		if f.GetName() == "envoy.filters.http.lua" {
			var l luav3.Lua
			require.NoError(t, f.GetTypedConfig().UnmarshalTo(&l))
			src = l.GetDefaultSourceCode().GetInlineString()
		}
	}
	require.NotEmpty(t, src)
	chunk, err := parse.Parse(strings.NewReader(src), "purser-usage.lua")
	require.NoError(t, err)
	proto, err := lua.Compile(chunk, "purser-usage.lua")
	require.NoError(t, err)
	return proto
}

// metadata is one namespace of dynamic metadata: key -> value (float64, string, bool, map, list).
type metadata map[string]any

// luaVM holds one Lua state with the script loaded; run may be called many times (the script
// keeps no state between responses, like Envoy's per-stream coroutines).
type luaVM struct {
	t *testing.T
	L *lua.LState
}

func newLuaVM(t *testing.T, proto *lua.FunctionProto) *luaVM {
	t.Helper()
	L := lua.NewState()
	t.Cleanup(L.Close)
	L.Push(L.NewFunctionFromProto(proto))
	require.NoError(t, L.PCall(0, lua.MultRet, nil))
	return &luaVM{t: t, L: L}
}

// run calls envoy_on_response with a stand-in for Envoy's handle API, delivering body in the
// given chunks, and returns namespace purser.usage.
func (vm *luaVM) run(contentType string, chunks [][]byte) metadata {
	t, L := vm.t, vm.L
	t.Helper()
	md := metadata{}
	fn := func(f lua.LGFunction) *lua.LFunction { return L.NewFunction(f) }
	headers := L.NewTable()
	headers.RawSetString("get", fn(func(L *lua.LState) int {
		if strings.EqualFold(L.CheckString(2), "content-type") && contentType != "" {
			L.Push(lua.LString(contentType))
			return 1
		}
		L.Push(lua.LNil)
		return 1
	}))
	dyn := L.NewTable()
	dyn.RawSetString("set", fn(func(L *lua.LState) int {
		ns, key := L.CheckString(2), L.CheckString(3)
		require.Equal(t, "purser.usage", ns)
		md[key] = fromLua(t, L.Get(4))
		return 0
	}))
	streamInfo := L.NewTable()
	streamInfo.RawSetString("dynamicMetadata", fn(func(L *lua.LState) int { L.Push(dyn); return 1 }))
	handle := L.NewTable()
	handle.RawSetString("headers", fn(func(L *lua.LState) int { L.Push(headers); return 1 }))
	handle.RawSetString("streamInfo", fn(func(L *lua.LState) int { L.Push(streamInfo); return 1 }))
	handle.RawSetString("bodyChunks", fn(func(L *lua.LState) int {
		i := 0
		L.Push(fn(func(L *lua.LState) int {
			if i >= len(chunks) {
				L.Push(lua.LNil)
				return 1
			}
			data := chunks[i]
			i++
			chunk := L.NewTable()
			chunk.RawSetString("length", fn(func(L *lua.LState) int { L.Push(lua.LNumber(len(data))); return 1 }))
			chunk.RawSetString("getBytes", fn(func(L *lua.LState) int {
				start, n := L.CheckInt(2), L.CheckInt(3)
				require.True(t, start >= 0 && n >= 0 && start+n <= len(data), "getBytes out of range")
				L.Push(lua.LString(data[start : start+n]))
				return 1
			}))
			L.Push(chunk)
			return 1
		}))
		return 1
	}))
	require.NoError(t, L.CallByParam(lua.P{Fn: L.GetGlobal("envoy_on_response"), NRet: 0, Protect: true}, handle))
	return md
}

// fromLua converts like Envoy's MetadataMapHelper::loadValue: array-shaped tables become lists,
// other tables Structs (string keys only).
func fromLua(t *testing.T, v lua.LValue) any {
	switch x := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LBool:
		return bool(x)
	case lua.LNumber:
		return float64(x)
	case lua.LString:
		return string(x)
	case *lua.LTable:
		if n := x.MaxN(); n > 0 {
			out := make([]any, n)
			for i := 1; i <= n; i++ {
				out[i-1] = fromLua(t, x.RawGetInt(i))
			}
			return out
		}
		out := map[string]any{}
		x.ForEach(func(k, v lua.LValue) {
			ks, ok := k.(lua.LString)
			require.True(t, ok, "Envoy rejects non-string table keys")
			out[string(ks)] = fromLua(t, v)
		})
		return out
	}
	t.Fatalf("unexpected Lua type %s in dynamic metadata", v.Type())
	return nil
}

// scenario is one fake response and the metadata both configs must derive from it.
type scenario struct {
	name, path, body string
	headers          map[string]string
	// flat: keys envoy.yaml's rules must write (dot paths). lua: path inside the Lua Structs.
	flat map[string]any
	lua  map[string]any
}

func scenarios() []scenario {
	h := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	openaiH := h(fakellm.HeaderInputTokens, "1234", fakellm.HeaderOutputTokens, "56", fakellm.HeaderCachedTokens, "7", fakellm.HeaderReasoningTokens, "11")
	anthropicH := h(fakellm.HeaderInputTokens, "300", fakellm.HeaderOutputTokens, "40", fakellm.HeaderCachedTokens, "1000", fakellm.HeaderCacheCreationTokens, "200")
	geminiH := h(fakellm.HeaderInputTokens, "10", fakellm.HeaderOutputTokens, "20", fakellm.HeaderCachedTokens, "3", fakellm.HeaderReasoningTokens, "5")
	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]`
	chatUsage := map[string]any{
		"usage.prompt_tokens": 1234.0, "usage.completion_tokens": 56.0, "usage.total_tokens": 1290.0,
		"usage.prompt_tokens_details.cached_tokens": 7.0, "usage.prompt_tokens_details.audio_tokens": 0.0,
		"usage.completion_tokens_details.reasoning_tokens": 11.0, "usage.completion_tokens_details.audio_tokens": 0.0,
		"model": "gpt-4o-mini",
	}
	chatLua := map[string]any{"usage.prompt_tokens": 1234.0, "usage.completion_tokens": 56.0, "usage.total_tokens": 1290.0,
		"usage.prompt_tokens_details.cached_tokens": 7.0, "usage.completion_tokens_details.reasoning_tokens": 11.0, "model": "gpt-4o-mini"}
	respFlat := func(prefix string) map[string]any {
		return map[string]any{
			prefix + "usage.input_tokens": 1234.0, prefix + "usage.output_tokens": 56.0, prefix + "usage.total_tokens": 1290.0,
			prefix + "usage.input_tokens_details.cached_tokens": 7.0, prefix + "usage.output_tokens_details.reasoning_tokens": 11.0,
			prefix + "model": "gpt-4o-mini",
		}
	}
	anthropicFlat := map[string]any{
		"usage.input_tokens": 300.0, "usage.output_tokens": 40.0, "usage.cache_read_input_tokens": 1000.0,
		"usage.cache_creation_input_tokens": 200.0, "usage.cache_creation.ephemeral_5m_input_tokens": 200.0,
		"model": "claude-sonnet-4-5",
	}
	geminiFlat := map[string]any{
		"usageMetadata.promptTokenCount": 10.0, "usageMetadata.candidatesTokenCount": 20.0, "usageMetadata.cachedContentTokenCount": 3.0,
		"usageMetadata.thoughtsTokenCount": 5.0, "usageMetadata.totalTokenCount": 35.0, "modelVersion": "gemini-2.5-flash",
	}
	gemini := `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`
	return []scenario{
		{name: "ChatJSON", path: "/v1/chat/completions", body: chat + `}`, headers: openaiH, flat: chatUsage, lua: chatLua},
		{name: "ChatSSE", path: "/v1/chat/completions", body: chat + `,"stream":true,"stream_options":{"include_usage":true}}`, headers: openaiH, flat: chatUsage, lua: chatLua},
		{name: "ChatSSEWithoutUsage", path: "/v1/chat/completions", body: chat + `,"stream":true}`, headers: openaiH,
			flat: map[string]any{"model": "gpt-4o-mini"}, lua: map[string]any{"model": "gpt-4o-mini"}},
		{name: "CompletionsSSE", path: "/v1/completions", body: `{"model":"gpt-3.5-turbo-instruct","prompt":"x","stream":true,"stream_options":{"include_usage":true}}`,
			headers: openaiH, flat: map[string]any{"usage.prompt_tokens": 1234.0, "usage.completion_tokens": 56.0, "usage.total_tokens": 1290.0},
			lua: map[string]any{"usage.prompt_tokens": 1234.0, "usage.completion_tokens": 56.0}},
		{name: "ResponsesJSON", path: "/v1/responses", body: `{"model":"gpt-4o-mini","input":"hi"}`, headers: openaiH, flat: respFlat(""), lua: respFlat("")},
		{name: "ResponsesSSE", path: "/v1/responses", body: `{"model":"gpt-4o-mini","input":"hi","stream":true}`, headers: openaiH,
			flat: respFlat("response."), lua: respFlat("response.")},
		{name: "EmbeddingsJSON", path: "/v1/embeddings", body: `{"model":"text-embedding-3-small","input":["a","b"]}`, headers: h(fakellm.HeaderInputTokens, "21"),
			flat: map[string]any{"usage.prompt_tokens": 21.0, "usage.total_tokens": 21.0, "model": "text-embedding-3-small"},
			lua:  map[string]any{"usage.prompt_tokens": 21.0, "usage.total_tokens": 21.0, "model": "text-embedding-3-small"}},
		{name: "AnthropicJSON", path: "/v1/messages", body: `{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}`,
			headers: anthropicH, flat: anthropicFlat, lua: anthropicFlat},
		{name: "AnthropicSSE", path: "/v1/messages", body: `{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			headers: anthropicH,
			flat: map[string]any{
				"message.usage.input_tokens": 300.0, "message.usage.output_tokens": 1.0, "message.usage.cache_read_input_tokens": 1000.0,
				"message.usage.cache_creation_input_tokens": 200.0, "message.model": "claude-sonnet-4-5",
				"usage.output_tokens": 40.0, "usage.input_tokens": 300.0, "usage.cache_read_input_tokens": 1000.0,
			},
			lua: map[string]any{
				"message.usage.input_tokens": 300.0, "message.usage.cache_read_input_tokens": 1000.0, "message.model": "claude-sonnet-4-5",
				"usage.output_tokens": 40.0,
			}},
		{name: "AnthropicSSECutAfterStart", path: "/v1/messages", body: `{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[]}`,
			headers: map[string]string{fakellm.HeaderInputTokens: "300", fakellm.HeaderCutAfter: "2"},
			flat:    map[string]any{"message.usage.input_tokens": 300.0},
			lua:     map[string]any{"message.usage.input_tokens": 300.0}},
		{name: "GeminiJSON", path: "/v1beta/models/gemini-2.5-flash:generateContent", body: gemini, headers: geminiH, flat: geminiFlat, lua: geminiFlat},
		{name: "GeminiSSE", path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", body: gemini, headers: geminiH, flat: geminiFlat, lua: geminiFlat},
		// Without ?alt=sse Gemini streams one JSON array: json_to_metadata's selectors only
		// walk objects, so its rules find nothing (envoy.yaml sends that route through the Lua
		// scan instead); the Lua scan reads every element, the last usageMetadata winning.
		{name: "GeminiJSONArrayStream", path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent", body: gemini, headers: geminiH, flat: map[string]any{}, lua: geminiFlat},
		{name: "ProviderError", path: "/v1/chat/completions", body: chat + `}`, headers: h(fakellm.HeaderStatus, "500"), flat: map[string]any{}, lua: map[string]any{}},
	}
}

// fetch returns the fake's raw response, reading a cut response up to the cut.
func fetch(t *testing.T, sc scenario) (string, []byte) {
	t.Helper()
	_, ts := start(t)
	req, err := http.NewRequest(http.MethodPost, ts.URL+sc.path, strings.NewReader(sc.body))
	require.NoError(t, err)
	req.Header.Set("content-type", "application/json")
	for k, v := range sc.headers {
		req.Header.Set(k, v)
	}
	res, err := ts.Client().Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body) // a cut stream ends with an error after the bytes that made it
	return res.Header.Get("content-type"), body
}

// lookup finds a dot path in Lua metadata, where whole objects are stored under their path
// (usage, message.usage, response.usage, usageMetadata) and scalars under theirs.
func lookup(md metadata, path string) (any, bool) {
	if v, ok := md[path]; ok {
		return v, true
	}
	parts := strings.Split(path, ".")
	for i := len(parts) - 1; i > 0; i-- {
		root, ok := md[strings.Join(parts[:i], ".")]
		if !ok {
			continue
		}
		cur := root
		for _, p := range parts[i:] {
			m, ok := cur.(map[string]any)
			if !ok {
				return nil, false
			}
			if cur, ok = m[p]; !ok {
				return nil, false
			}
		}
		return cur, true
	}
	return nil, false
}

func TestEnvoyUsageRules_AgainstFake(t *testing.T) {
	t.Parallel()
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			ct, body := fetch(t, sc)
			md := cfg.ResponseMetadata(ct, body)
			for ns := range md {
				require.Equal(t, "purser.usage", ns, "usage rules write purser.usage only")
			}
			got := md["purser.usage"].AsMap()
			for k, want := range sc.flat {
				require.Equal(t, want, got[k], "key %s (content-type %s)", k, ct)
			}
			if len(sc.flat) == 0 {
				require.Empty(t, got, "nothing to extract from an error body")
			}
			for k := range got {
				require.NotContains(t, k, "usage_status")
			}
		})
	}
}

func TestEnvoyLuaUsage_AgainstFake(t *testing.T) {
	t.Parallel()
	proto := loadLuaScript(t)
	for i, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(1, uint64(i))) // per subtest: subtests run in parallel
			ct, body := fetch(t, sc)
			vm := newLuaVM(t, proto)
			check := func(how string, chunks [][]byte) {
				t.Helper()
				md := vm.run(ct, chunks)
				for k, want := range sc.lua {
					v, ok := lookup(md, k)
					require.True(t, ok, "%s: key %s missing in %v", how, k, md)
					require.Equal(t, want, v, "%s: key %s", how, k)
				}
				if len(sc.lua) == 0 {
					require.Empty(t, md, "%s", how)
				}
			}
			check("one chunk", [][]byte{body})
			// Every two-way split, then 1-byte chunks, then random splits: a key, a number, an
			// escape or a line end may fall on any chunk boundary.
			step := max(1, len(body)/150)
			for i := 1; i < len(body); i += step {
				check(fmt.Sprintf("split at %d", i), [][]byte{body[:i], body[i:]})
			}
			bytesOnly := make([][]byte, len(body))
			for i := range body {
				bytesOnly[i] = body[i : i+1]
			}
			check("1-byte chunks", bytesOnly)
			for n := 0; n < 8; n++ {
				check(fmt.Sprintf("random #%d", n), randomChunks(rng, body))
			}
		})
	}
}

func randomChunks(rng *rand.Rand, body []byte) [][]byte {
	var out [][]byte
	for len(body) > 0 {
		n := min(len(body), 1+rng.IntN(64))
		out = append(out, body[:n])
		body = body[n:]
	}
	return out
}

// TestEnvoyLuaUsage_EdgeCases feeds bodies the fake does not produce but providers can.
func TestEnvoyLuaUsage_EdgeCases(t *testing.T) {
	t.Parallel()
	proto := loadLuaScript(t)
	cases := []struct {
		name, ct, body string
		want           map[string]any
		absent         []string
	}{
		{
			name: "UsageTextInsideContentIsIgnored", ct: "application/json",
			body: `{"choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 999} and \"model\": \"x\""}}],"model":"m1","usage":{"prompt_tokens":5,"completion_tokens":6}}`,
			want: map[string]any{"usage.prompt_tokens": 5.0, "usage.completion_tokens": 6.0, "model": "m1"},
		},
		{
			name: "CRLFAndNoSpaceAfterColon", ct: "text/event-stream",
			body: "data:{\"model\":\"m\",\"usage\":null}\r\n\r\ndata:{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\r\n\r\ndata: [DONE]\r\n\r\n",
			want: map[string]any{"usage.prompt_tokens": 3.0, "usage.completion_tokens": 4.0, "model": "m"},
		},
		{
			name: "LastLineWithoutNewline", ct: "text/event-stream",
			body: "data: {\"usage\":{\"output_tokens\":9}}",
			want: map[string]any{"usage.output_tokens": 9.0},
		},
		{
			name: "CharsetParameterAndUnicodeEscapes", ct: "application/json; charset=utf-8",
			body: `{"model":"caf\u00e9","usage":{"input_tokens":1,"output_tokens":2,"server_tool_use":{"web_search_requests":3}},"x":[1,2]}`,
			want: map[string]any{"usage.input_tokens": 1.0, "usage.server_tool_use.web_search_requests": 3.0},
		},
		{
			name: "NotJSONNotSSE", ct: "text/plain", body: `{"usage":{"prompt_tokens":1}}`,
			absent: []string{"usage"},
		},
		{
			name: "GarbageDoesNotFail", ct: "application/json", body: `{"usage":{"prompt_tokens":}`,
			absent: []string{"usage"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := []byte(tc.body)
			vm := newLuaVM(t, proto)
			for i := 0; i <= len(body); i++ {
				chunks := [][]byte{body[:i], body[i:]}
				md := vm.run(tc.ct, chunks)
				for k, want := range tc.want {
					v, ok := lookup(md, k)
					require.True(t, ok, "split %d: %s missing in %v", i, k, md)
					require.Equal(t, want, v, "split %d: %s", i, k)
				}
				for _, k := range tc.absent {
					_, ok := lookup(md, k)
					require.False(t, ok, "split %d: %s must be absent", i, k)
				}
			}
		})
	}
}

// TestEnvoyLuaUsage_LargeBodyIsNotHeld checks the script keeps only a bounded tail of a large
// JSON body (an embeddings batch) while still finding the usage at its end.
func TestEnvoyLuaUsage_LargeBodyIsNotHeld(t *testing.T) {
	t.Parallel()
	proto := loadLuaScript(t)
	var b bytes.Buffer
	b.WriteString(`{"object":"list","data":[`)
	for i := 0; i < 20000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[0.1,0.2,0.3,0.4]}`, i)
	}
	b.WriteString(`],"model":"text-embedding-3-small","usage":{"prompt_tokens":42,"total_tokens":42}}`)
	body := b.Bytes()
	var chunks [][]byte
	for len(body) > 0 {
		n := min(len(body), 16384)
		chunks = append(chunks, body[:n])
		body = body[n:]
	}
	md := newLuaVM(t, proto).run("application/json", chunks)
	v, ok := lookup(md, "usage.prompt_tokens")
	require.True(t, ok)
	require.Equal(t, 42.0, v)
}
