package fakellm_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
)

// rawPost sends a request with exactly the given Accept-Encoding (none when empty) through a
// transport that does not decompress, and returns the response with its body as received.
func rawPost(t *testing.T, url, path, body, acceptEncoding string, h map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("content-type", "application/json")
	if acceptEncoding != "" {
		req.Header.Set("accept-encoding", acceptEncoding)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	tr := &http.Transport{DisableCompression: true} // the bytes as a proxy sees them
	t.Cleanup(tr.CloseIdleConnections)
	res, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, b
}

func decode(t *testing.T, coding string, b []byte) []byte {
	t.Helper()
	var r io.Reader
	switch coding {
	case "":
		return b
	case fakellm.CodingGzip:
		zr, err := gzip.NewReader(bytes.NewReader(b))
		require.NoError(t, err)
		r = zr
	case fakellm.CodingBrotli:
		r = brotli.NewReader(bytes.NewReader(b))
	case fakellm.CodingZstd:
		zr, err := zstd.NewReader(bytes.NewReader(b))
		require.NoError(t, err)
		defer zr.Close()
		r = zr
	default:
		t.Fatalf("unexpected coding %q", coding)
	}
	out, err := io.ReadAll(r)
	require.NoError(t, err, "a complete %s stream", coding)
	return out
}

// TestCompression_AsProvidersAnswer: each API answers with the coding its provider picks
// for the client's Accept-Encoding, JSON and event streams alike, and the bytes decode to the
// same answer. Compressed, envoy.yaml's usage rules find nothing in them: that is the
// production failure purser's accept-encoding: identity prevents.
func TestCompression_AsProvidersAnswer(t *testing.T) {
	t.Parallel()
	_, ts := start(t)
	cfg, err := envoysim.LoadShipped()
	require.NoError(t, err)
	const (
		goSDK   = "gzip"                    // Go's transport, hence the openai-go / anthropic-sdk-go / genai defaults
		nodeSDK = "gzip, deflate, br"       // Node's fetch (undici)
		newest  = "gzip, deflate, br, zstd" // Node 22+ / httpx with zstandard installed
		pyHTTPX = "gzip, deflate"           // Python's httpx without brotli
	)
	chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]`
	cases := []struct {
		name, path, body, accept, want string
		usageKey                       string
	}{
		{"OpenAIChatNone", "/v1/chat/completions", chat + `}`, "", "", "usage.prompt_tokens"},
		{"OpenAIChatIdentity", "/v1/chat/completions", chat + `}`, "identity", "", "usage.prompt_tokens"},
		{"OpenAIChatGoSDK", "/v1/chat/completions", chat + `}`, goSDK, "gzip", "usage.prompt_tokens"},
		{"OpenAIChatNode", "/v1/chat/completions", chat + `}`, nodeSDK, "br", "usage.prompt_tokens"},
		{"OpenAIChatNewest", "/v1/chat/completions", chat + `}`, newest, "zstd", "usage.prompt_tokens"},
		{"OpenAIChatPython", "/v1/chat/completions", chat + `}`, pyHTTPX, "gzip", "usage.prompt_tokens"},
		{"OpenAIChatRefusesBr", "/v1/chat/completions", chat + `}`, "br;q=0, gzip;q=0.5", "gzip", "usage.prompt_tokens"},
		{"OpenAIChatDeflateOnly", "/v1/chat/completions", chat + `}`, "deflate", "", "usage.prompt_tokens"},
		{"OpenAIChatStar", "/v1/chat/completions", chat + `}`, "*", "zstd", "usage.prompt_tokens"},
		{"OpenAIChatStreamGoSDK", "/v1/chat/completions", chat + `,"stream":true,"stream_options":{"include_usage":true}}`, goSDK, "gzip", "usage.prompt_tokens"},
		{"OpenAIResponsesStreamNewest", "/v1/responses", `{"model":"gpt-4o-mini","input":"hi","stream":true}`, newest, "zstd", "response.usage.input_tokens"},
		{"AnthropicNode", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[]}`, nodeSDK, "gzip", "usage.input_tokens"},
		{"AnthropicStreamGoSDK", "/v1/messages", `{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[]}`, goSDK, "gzip", "message.usage.input_tokens"},
		{"GeminiNode", "/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":[]}`, nodeSDK, "gzip", "usageMetadata.promptTokenCount"},
		{"GeminiSSEGoSDK", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", `{"contents":[]}`, goSDK, "gzip", "usageMetadata.promptTokenCount"},
	}
	h := map[string]string{fakellm.HeaderInputTokens: "321", fakellm.HeaderOutputTokens: "12"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res, raw := rawPost(t, ts.URL, tc.path, tc.body, tc.accept, h)
			require.Equal(t, http.StatusOK, res.StatusCode)
			require.Equal(t, tc.want, res.Header.Get("content-encoding"), "coding chosen for %q", tc.accept)
			if tc.want != "" {
				if cl := res.Header.Get("content-length"); cl != "" {
					require.Equal(t, strconv.Itoa(len(raw)), cl, "a compressed answer's length is the compressed body's")
				}
				require.Contains(t, res.Header.Values("vary"), "Accept-Encoding")
			}
			plain := decode(t, tc.want, raw)
			ct := res.Header.Get("content-type")
			md := cfg.ResponseMetadata(ct, plain)["purser.usage"].AsMap()
			require.Equal(t, 321.0, md[tc.usageKey], "usage in the decoded answer (%s)", ct)
			if tc.want != "" {
				require.Empty(t, cfg.ResponseMetadata(ct, raw)["purser.usage"].AsMap(),
					"the compressed bytes hold no usage a proxy filter can read")
			}
		})
	}
}

// TestCompression_StreamStaysAStream: a compressed event stream is flushed per event, so the
// first event can be decoded while the rest is still being produced.
func TestCompression_StreamStaysAStream(t *testing.T) {
	t.Parallel()
	_, ts := start(t)
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[]}`))
	require.NoError(t, err)
	req.Header.Set("accept-encoding", "gzip")
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	res, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, "gzip", res.Header.Get("content-encoding"))
	zr, err := gzip.NewReader(res.Body)
	require.NoError(t, err)
	first := make([]byte, len("event: message_start\n"))
	_, err = io.ReadFull(zr, first)
	require.NoError(t, err)
	require.Equal(t, "event: message_start\n", string(first))
	rest, err := io.ReadAll(zr)
	require.NoError(t, err, "the gzip stream ends with its trailer")
	require.Contains(t, string(rest), "message_stop")
}

// TestCompression_CutStreamHasNoTrailer: a response cut by x-fake-cut-after ends without the
// coding's trailer, so a decoder sees an unexpected end, as a reset stream gives.
func TestCompression_CutStreamHasNoTrailer(t *testing.T) {
	t.Parallel()
	_, ts := start(t)
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":100,"stream":true,"messages":[]}`))
	require.NoError(t, err)
	req.Header.Set("accept-encoding", "gzip")
	req.Header.Set(fakellm.HeaderCutAfter, "2")
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	res, err := (&http.Client{Transport: tr}).Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body) // ends with an error: the connection was dropped
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	require.NoError(t, err)
	got, err := io.ReadAll(zr)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Contains(t, string(got), "message_start", "what was flushed before the cut decodes")
}

// TestGemini_JSONArrayStream: without ?alt=sse a stream is one JSON array (application/json),
// each element a chunk with the cumulative usageMetadata.
func TestGemini_JSONArrayStream(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	h := map[string]string{fakellm.HeaderInputTokens: "10", fakellm.HeaderOutputTokens: "20", fakellm.HeaderReasoningTokens: "5", fakellm.HeaderCachedTokens: "3"}
	for _, path := range []string{":streamGenerateContent", ":streamGenerateContent?alt=json"} {
		res, raw := rawPost(t, ts.URL, "/v1beta/models/gemini-2.5-flash"+path, `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`, "", h)
		require.Equal(t, http.StatusOK, res.StatusCode, path)
		require.Equal(t, "application/json; charset=UTF-8", res.Header.Get("content-type"), path)
		require.True(t, bytes.HasPrefix(raw, []byte("[{\n")), "%s: starts as a JSON array of pretty-printed objects", path)
		require.Contains(t, string(raw), "\n,\r\n{", path)
		var chunks []struct {
			UsageMetadata map[string]any `json:"usageMetadata"`
			ModelVersion  string         `json:"modelVersion"`
		}
		require.NoError(t, json.Unmarshal(raw, &chunks), path)
		require.Greater(t, len(chunks), 1, path)
		last := chunks[len(chunks)-1].UsageMetadata
		for k, want := range map[string]float64{"promptTokenCount": 10, "candidatesTokenCount": 20, "cachedContentTokenCount": 3,
			"thoughtsTokenCount": 5, "totalTokenCount": 35} {
			require.Equal(t, want, last[k], "%s: last chunk's %s", path, k)
		}
		require.Less(t, chunks[0].UsageMetadata["candidatesTokenCount"], 20.0, "%s: usage is cumulative", path)
		rec := lastRecord(t, fake)
		require.True(t, rec.Stream)
		require.Equal(t, fakellm.Usage{InputTokens: 10, OutputTokens: 20, CachedTokens: 3, ReasoningTokens: 5}, rec.Reported)
	}
	// Cut after two chunks: an unterminated array whose last complete element reports the
	// usage so far.
	h[fakellm.HeaderCutAfter] = "2"
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent", strings.NewReader(`{"contents":[]}`))
	require.NoError(t, err)
	for k, v := range h {
		req.Header.Set(k, v)
	}
	res, err := ts.Client().Do(req)
	require.NoError(t, err)
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, 1, strings.Count(string(raw), "\n,\r\n"), "two chunks before the cut")
	require.False(t, strings.HasSuffix(string(raw), "]"))
	rec := lastRecord(t, fake)
	require.False(t, rec.Complete)
	require.Less(t, rec.Reported.OutputTokens, int64(20))
}
