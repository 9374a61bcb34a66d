package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"
	"github.com/stretchr/testify/require"
)

// scenarioSDKDefaults: each SDK with its default HTTP client, which offers gzip (Go's
// transport adds Accept-Encoding itself), through the stand-in running envoy/envoy.yaml, to a
// fake provider that compresses as the real ones do. Every call, streamed or not, settles at
// the price of the usage the provider reported: purser's OK answer asked the provider for an
// uncompressed response, so the usage filters could read it. Not one is charged its hold.
func scenarioSDKDefaults(t *testing.T, bin string) {
	st := newStack(t, bin, stackOpts{})
	ctx := context.Background()
	keyID, secret := st.key("sdk")
	b := st.budget("key daily", "key:"+keyID, 10_000_000, "day")
	var settled []reservation
	check := func(what string) {
		t.Helper()
		id := st.lastRequestID()
		rec := st.record(id)
		require.Equal(t, "identity", rec.AcceptEncoding, "%s: purser overwrote the SDK's Accept-Encoding", what)
		require.Empty(t, rec.Encoding, "%s: the provider answered uncompressed", what)
		r := st.assertSettledAtReportedPrice(id)
		// Settled from the usage (cause "usage", checked above), at or below the hold: the
		// embeddings call costs one micro-dollar either way, everything else much less than held.
		require.LessOrEqual(t, *r.Actual, r.Hold, what)
		if r.Hold > 10 {
			require.Less(t, *r.Actual, r.Hold, "%s: settled below the hold, not charged it", what)
		}
		settled = append(settled, r)
	}

	oa := st.openai(secret, usage(1200, 80))
	_, err := oa.Chat.Completions.New(ctx, chat(500))
	require.NoError(t, err)
	check("openai chat")

	p := chat(500)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := oa.Chat.Completions.NewStreaming(ctx, p)
	for s.Next() {
	}
	require.NoError(t, s.Err())
	check("openai chat stream")

	rp := responses.ResponseNewParams{Model: "gpt-4o-mini", Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")},
		MaxOutputTokens: openai.Int(500)}
	_, err = oa.Responses.New(ctx, rp)
	require.NoError(t, err)
	check("openai responses")
	rs := oa.Responses.NewStreaming(ctx, rp)
	for rs.Next() {
	}
	require.NoError(t, rs.Err())
	check("openai responses stream")

	// Two one-word inputs: the fake reports 2 tokens, within purser's byte bound of the input.
	_, err = st.openai(secret, usage(2, 0)).Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}}})
	require.NoError(t, err)
	check("openai embeddings")

	an := st.anthropic(secret, usage(800, 40))
	_, err = an.Messages.New(ctx, messages(256))
	require.NoError(t, err)
	check("anthropic messages")
	as := an.Messages.NewStreaming(ctx, messages(256))
	var msg anthropic.Message
	for as.Next() {
		require.NoError(t, msg.Accumulate(as.Current()))
	}
	require.NoError(t, as.Err())
	check("anthropic messages stream")

	for _, form := range []geminiForm{geminiUnary, geminiSSE, geminiJSONArray} {
		out, err := geminiCall(ctx, st.baseURL, secret, "gemini-2.5-flash", form, usage(900, 60))
		require.NoError(t, err, form)
		require.EqualValues(t, 60, out, "%s: the client read the usage too", form)
		check("gemini " + string(form))
	}

	var sum int64
	for _, r := range settled {
		sum += *r.Actual
	}
	posted, pending := st.window(b)
	require.Equal(t, sum, posted, "the budget was charged the real prices")
	require.Zero(t, pending)
	st.verify()
}

type geminiForm string

const (
	geminiUnary     geminiForm = "generateContent"
	geminiSSE       geminiForm = "streamGenerateContent?alt=sse"
	geminiJSONArray geminiForm = "streamGenerateContent"
)

// geminiCall sends a Gemini API request as Google's Go SDK does (google.golang.org/genai
// v1.79.1: api_client.go buildRequest sets Content-Type: application/json and x-goog-api-key,
// and sends the body with json.Encoder; client.go gives the SDK a plain &http.Client{}, whose
// transport offers gzip; models.go streams from "{model}:streamGenerateContent?alt=sse" and
// reads the "data:" lines). The JSON-array form is what Google's REST clients and curl get
// without alt=sse. It returns the last candidatesTokenCount the client saw.
func geminiCall(ctx context.Context, base, apiKey, model string, form geminiForm, hdr map[string]string) (int64, error) {
	body := map[string]any{
		"contents":         []any{map[string]any{"parts": []any{map[string]any{"text": "Say hello"}}, "role": "user"}},
		"generationConfig": map[string]any{"maxOutputTokens": 256},
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(body); err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1beta/models/"+model+":"+string(form), &buf)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("x-goog-api-key", apiKey)
	req.Header.Set("user-agent", "google-genai-sdk/1.79.1 gl-go/go1.26")
	req.Header.Set("x-goog-api-client", "google-genai-sdk/1.79.1 gl-go/go1.26")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := (&http.Client{}).Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		return 0, fmt.Errorf("%s: %s", res.Status, b)
	}
	type chunk struct {
		UsageMetadata struct {
			CandidatesTokenCount int64 `json:"candidatesTokenCount"`
		} `json:"usageMetadata"`
	}
	var last chunk
	switch form {
	case geminiSSE:
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data:"); ok {
				if err := json.Unmarshal([]byte(strings.TrimSpace(data)), &last); err != nil {
					return 0, err
				}
			}
		}
		return last.UsageMetadata.CandidatesTokenCount, sc.Err()
	case geminiJSONArray:
		var all []chunk
		if err := json.NewDecoder(res.Body).Decode(&all); err != nil {
			return 0, err
		}
		if len(all) == 0 {
			return 0, fmt.Errorf("empty stream")
		}
		return all[len(all)-1].UsageMetadata.CandidatesTokenCount, nil
	}
	err = json.NewDecoder(res.Body).Decode(&last)
	return last.UsageMetadata.CandidatesTokenCount, err
}
