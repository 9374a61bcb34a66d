package fakellm_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/internal/fakellm"
)

func start(t *testing.T) (*fakellm.Server, *httptest.Server) {
	t.Helper()
	fake := fakellm.New()
	ts := httptest.NewServer(fake) // 127.0.0.1:0
	t.Cleanup(ts.Close)
	return fake, ts
}

func openaiClient(ts *httptest.Server, headers map[string]string) openai.Client {
	opts := []option.RequestOption{
		option.WithBaseURL(ts.URL + "/v1/"),
		option.WithAPIKey("sk-test"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(ts.Client()),
	}
	for k, v := range headers {
		opts = append(opts, option.WithHeader(k, v))
	}
	return openai.NewClient(opts...)
}

func anthropicClient(ts *httptest.Server, headers map[string]string) anthropic.Client {
	opts := []aoption.RequestOption{
		aoption.WithBaseURL(ts.URL),
		aoption.WithAPIKey("sk-ant-test"),
		aoption.WithMaxRetries(0),
		aoption.WithHTTPClient(ts.Client()),
	}
	for k, v := range headers {
		opts = append(opts, aoption.WithHeader(k, v))
	}
	return anthropic.NewClient(opts...)
}

var usageHeaders = map[string]string{
	fakellm.HeaderInputTokens:     "1234",
	fakellm.HeaderOutputTokens:    "56",
	fakellm.HeaderCachedTokens:    "7",
	fakellm.HeaderReasoningTokens: "11",
}

var wantUsage = fakellm.Usage{InputTokens: 1234, OutputTokens: 56, CachedTokens: 7, ReasoningTokens: 11}

// served returns the fake's records once every request it is serving has been recorded (a
// client may be done with a response before the fake's handler returned).
func served(t *testing.T, fake *fakellm.Server) []fakellm.Record {
	t.Helper()
	require.Eventually(t, func() bool { return fake.Busy() == 0 }, 10*time.Second, time.Millisecond, "requests still being served")
	return fake.Requests()
}

func lastRecord(t *testing.T, fake *fakellm.Server) fakellm.Record {
	t.Helper()
	recs := served(t, fake)
	require.NotEmpty(t, recs)
	return recs[len(recs)-1]
}

func chatParams() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
	}
}

func TestOpenAI_ChatCompletion(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, usageHeaders)
	resp, err := client.Chat.Completions.New(context.Background(), chatParams())
	require.NoError(t, err)
	require.Equal(t, int64(1234), resp.Usage.PromptTokens)
	require.Equal(t, int64(56), resp.Usage.CompletionTokens)
	require.Equal(t, int64(1290), resp.Usage.TotalTokens)
	require.Equal(t, int64(7), resp.Usage.PromptTokensDetails.CachedTokens)
	require.Equal(t, int64(11), resp.Usage.CompletionTokensDetails.ReasoningTokens)
	require.Equal(t, "gpt-4o-mini", resp.Model)
	require.Len(t, resp.Choices, 1)
	require.NotEmpty(t, resp.Choices[0].Message.Content)
	require.Equal(t, "stop", string(resp.Choices[0].FinishReason))

	rec := lastRecord(t, fake)
	require.Equal(t, "chat", rec.API)
	require.Equal(t, "gpt-4o-mini", rec.Model)
	require.Equal(t, http.StatusOK, rec.Status)
	require.Equal(t, wantUsage, rec.Usage)
	require.Equal(t, wantUsage, rec.Reported)
	require.True(t, rec.Complete)
}

func TestOpenAI_ChatCompletionDefaultsToCappedOutput(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, nil)

	p := chatParams()
	p.MaxTokens = openai.Int(5)
	resp, err := client.Chat.Completions.New(context.Background(), p)
	require.NoError(t, err)
	require.Equal(t, int64(5), resp.Usage.CompletionTokens, "default output = min(max_tokens, default)")
	require.Equal(t, "length", string(resp.Choices[0].FinishReason))

	p = chatParams()
	p.MaxCompletionTokens = openai.Int(1000)
	resp, err = client.Chat.Completions.New(context.Background(), p)
	require.NoError(t, err)
	require.Equal(t, int64(fakellm.DefaultOutputTokens), resp.Usage.CompletionTokens)
	require.Positive(t, resp.Usage.PromptTokens, "default input is derived from the body size")
	require.Len(t, served(t, fake), 2)
}

func TestOpenAI_ChatCompletionStream(t *testing.T) {
	t.Parallel()
	for _, include := range []bool{true, false} {
		t.Run(map[bool]string{true: "IncludeUsage", false: "NoUsage"}[include], func(t *testing.T) {
			t.Parallel()
			fake, ts := start(t)
			client := openaiClient(ts, usageHeaders)
			p := chatParams()
			if include {
				p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			stream := client.Chat.Completions.NewStreaming(context.Background(), p)
			var acc openai.ChatCompletionAccumulator
			for stream.Next() {
				acc.AddChunk(stream.Current())
			}
			require.NoError(t, stream.Err())
			require.NotEmpty(t, acc.Choices[0].Message.Content)
			rec := lastRecord(t, fake)
			require.True(t, rec.Stream)
			require.Equal(t, include, rec.IncludeUsage)
			require.True(t, rec.Complete)
			if include {
				require.Equal(t, int64(1234), acc.Usage.PromptTokens)
				require.Equal(t, int64(56), acc.Usage.CompletionTokens)
				require.Equal(t, int64(7), acc.Usage.PromptTokensDetails.CachedTokens)
				require.Equal(t, int64(11), acc.Usage.CompletionTokensDetails.ReasoningTokens)
				require.Equal(t, wantUsage, rec.Reported)
			} else {
				// Like OpenAI: no usage at all without stream_options.include_usage.
				require.Zero(t, acc.Usage.TotalTokens)
				require.Equal(t, fakellm.Usage{}, rec.Reported)
				require.Equal(t, wantUsage, rec.Usage)
			}
		})
	}
}

func TestOpenAI_Completions(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, map[string]string{fakellm.HeaderInputTokens: "9", fakellm.HeaderOutputTokens: "4"})
	p := openai.CompletionNewParams{
		Model:  "gpt-3.5-turbo-instruct",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon")},
	}
	resp, err := client.Completions.New(context.Background(), p)
	require.NoError(t, err)
	require.Equal(t, int64(9), resp.Usage.PromptTokens)
	require.Equal(t, int64(4), resp.Usage.CompletionTokens)
	require.NotEmpty(t, resp.Choices[0].Text)

	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Completions.NewStreaming(context.Background(), p)
	var usage openai.CompletionUsage
	var text strings.Builder
	for stream.Next() {
		c := stream.Current()
		if len(c.Choices) > 0 {
			text.WriteString(c.Choices[0].Text)
		}
		if c.Usage.TotalTokens > 0 {
			usage = c.Usage
		}
	}
	require.NoError(t, stream.Err())
	require.NotEmpty(t, text.String())
	require.Equal(t, int64(9), usage.PromptTokens)
	require.Equal(t, int64(4), usage.CompletionTokens)
	require.Equal(t, fakellm.Usage{InputTokens: 9, OutputTokens: 4}, lastRecord(t, fake).Reported)
}

func responsesParams() responses.ResponseNewParams {
	return responses.ResponseNewParams{
		Model: "gpt-4o-mini",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")},
	}
}

func TestOpenAI_Responses(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, usageHeaders)
	resp, err := client.Responses.New(context.Background(), responsesParams())
	require.NoError(t, err)
	require.Equal(t, int64(1234), resp.Usage.InputTokens)
	require.Equal(t, int64(56), resp.Usage.OutputTokens)
	require.Equal(t, int64(1290), resp.Usage.TotalTokens)
	require.Equal(t, int64(7), resp.Usage.InputTokensDetails.CachedTokens)
	require.Equal(t, int64(11), resp.Usage.OutputTokensDetails.ReasoningTokens)
	require.NotEmpty(t, resp.OutputText())
	require.Equal(t, responses.ResponseStatusCompleted, resp.Status)
	require.Equal(t, wantUsage, lastRecord(t, fake).Reported)
}

func TestOpenAI_ResponsesStream(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, usageHeaders)
	p := responsesParams()
	p.MaxOutputTokens = openai.Int(1000)
	stream := client.Responses.NewStreaming(context.Background(), p)
	var final responses.Response
	var text strings.Builder
	var types []string
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "response.completed":
			final = ev.Response
		}
	}
	require.NoError(t, stream.Err())
	require.Equal(t, "response.created", types[0])
	require.Equal(t, "response.completed", types[len(types)-1])
	require.NotEmpty(t, text.String())
	require.Equal(t, int64(1234), final.Usage.InputTokens)
	require.Equal(t, int64(56), final.Usage.OutputTokens)
	require.Equal(t, int64(7), final.Usage.InputTokensDetails.CachedTokens)
	require.Equal(t, int64(11), final.Usage.OutputTokensDetails.ReasoningTokens)
	require.Equal(t, wantUsage, lastRecord(t, fake).Reported)
}

func TestOpenAI_Embeddings(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, map[string]string{fakellm.HeaderInputTokens: "21"})
	resp, err := client.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
		Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b", "c"}},
	})
	require.NoError(t, err)
	require.Len(t, resp.Data, 3)
	require.Len(t, resp.Data[2].Embedding, 8)
	require.Equal(t, int64(21), resp.Usage.PromptTokens)
	require.Equal(t, int64(21), resp.Usage.TotalTokens)
	rec := lastRecord(t, fake)
	require.Equal(t, "embeddings", rec.API)
	require.Equal(t, fakellm.Usage{InputTokens: 21}, rec.Reported)

	// base64 encoding (the Python SDK's default) and explicit dimensions.
	resp, err = client.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
		Model:          "text-embedding-3-small",
		Input:          openai.EmbeddingNewParamsInputUnion{OfString: openai.String("a")},
		Dimensions:     openai.Int(4),
		EncodingFormat: openai.EmbeddingNewParamsEncodingFormatBase64,
	})
	require.NoError(t, err)
	require.Len(t, resp.Data, 1)
}

func TestOpenAI_Models(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, nil)
	page, err := client.Models.List(context.Background())
	require.NoError(t, err)
	require.NotEmpty(t, page.Data)
	m, err := client.Models.Get(context.Background(), "gpt-4o-mini")
	require.NoError(t, err)
	require.Equal(t, "gpt-4o-mini", m.ID)
	_, err = client.Models.Get(context.Background(), "no-such-model")
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
	recs := served(t, fake)
	require.Len(t, recs, 3)
	for _, rec := range recs {
		require.Equal(t, "models", rec.API)
		require.Equal(t, fakellm.Usage{}, rec.Usage, "non-billable")
	}
}

func messageParams() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 1024,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello"))},
	}
}

var anthropicHeaders = map[string]string{
	fakellm.HeaderInputTokens:         "300",
	fakellm.HeaderOutputTokens:        "40",
	fakellm.HeaderCachedTokens:        "1000",
	fakellm.HeaderCacheCreationTokens: "200",
}

var wantAnthropic = fakellm.Usage{InputTokens: 300, OutputTokens: 40, CachedTokens: 1000, CacheCreationTokens: 200}

func TestAnthropic_Messages(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := anthropicClient(ts, anthropicHeaders)
	msg, err := client.Messages.New(context.Background(), messageParams())
	require.NoError(t, err)
	require.Equal(t, int64(300), msg.Usage.InputTokens)
	require.Equal(t, int64(40), msg.Usage.OutputTokens)
	require.Equal(t, int64(1000), msg.Usage.CacheReadInputTokens)
	require.Equal(t, int64(200), msg.Usage.CacheCreationInputTokens)
	require.Equal(t, int64(200), msg.Usage.CacheCreation.Ephemeral5mInputTokens)
	require.Equal(t, anthropic.StopReasonEndTurn, msg.StopReason)
	require.NotEmpty(t, msg.Content[0].Text)
	rec := lastRecord(t, fake)
	require.Equal(t, "anthropic", rec.API)
	require.Equal(t, wantAnthropic, rec.Reported)
}

func TestAnthropic_MessagesStream(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := anthropicClient(ts, anthropicHeaders)
	stream := client.Messages.NewStreaming(context.Background(), messageParams())
	var msg anthropic.Message
	var types []string
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		require.NoError(t, msg.Accumulate(ev))
	}
	require.NoError(t, stream.Err())
	require.Equal(t, []string{"message_start", "content_block_start", "content_block_delta"}, types[:3], "the SDK drops ping events")
	require.Equal(t, []string{"content_block_stop", "message_delta", "message_stop"}, types[len(types)-3:])
	require.Equal(t, int64(300), msg.Usage.InputTokens)
	require.Equal(t, int64(40), msg.Usage.OutputTokens)
	require.Equal(t, int64(1000), msg.Usage.CacheReadInputTokens)
	require.Equal(t, int64(200), msg.Usage.CacheCreationInputTokens)
	require.NotEmpty(t, msg.Content[0].Text)
	require.Equal(t, wantAnthropic, lastRecord(t, fake).Reported)
}

func TestAnthropic_CountTokens(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := anthropicClient(ts, map[string]string{fakellm.HeaderInputTokens: "77"})
	res, err := client.Messages.CountTokens(context.Background(), anthropic.MessageCountTokensParams{
		Model:    "claude-sonnet-4-5",
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	})
	require.NoError(t, err)
	require.Equal(t, int64(77), res.InputTokens)
	rec := lastRecord(t, fake)
	require.Equal(t, "count_tokens", rec.API)
	require.Equal(t, fakellm.Usage{}, rec.Usage, "non-billable")
}

func TestProviderErrors(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	oc := openaiClient(ts, map[string]string{fakellm.HeaderStatus: "500"})
	_, err := oc.Chat.Completions.New(context.Background(), chatParams())
	var oerr *openai.Error
	require.ErrorAs(t, err, &oerr)
	require.Equal(t, http.StatusInternalServerError, oerr.StatusCode)

	ac := anthropicClient(ts, map[string]string{fakellm.HeaderStatus: "529"})
	_, err = ac.Messages.New(context.Background(), messageParams())
	var aerr *anthropic.Error
	require.ErrorAs(t, err, &aerr)
	require.Equal(t, 529, aerr.StatusCode)

	recs := served(t, fake)
	require.Len(t, recs, 2)
	for _, rec := range recs {
		require.GreaterOrEqual(t, rec.Status, 500)
		require.Equal(t, fakellm.Usage{}, rec.Usage, "errors carry no usage")
		require.Equal(t, fakellm.Usage{}, rec.Reported)
	}
}

func TestCutAfter(t *testing.T) {
	t.Parallel()
	t.Run("OpenAIStreamLosesFinalUsage", func(t *testing.T) {
		t.Parallel()
		fake, ts := start(t)
		h := map[string]string{fakellm.HeaderCutAfter: "3", fakellm.HeaderOutputTokens: "40"}
		p := chatParams()
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		client := openaiClient(ts, h)
		stream := client.Chat.Completions.NewStreaming(context.Background(), p)
		n := 0
		for stream.Next() {
			n++
		}
		require.Error(t, stream.Err(), "a cut stream must not look complete")
		require.Equal(t, 3, n)
		rec := lastRecord(t, fake)
		require.False(t, rec.Complete)
		require.Equal(t, fakellm.Usage{}, rec.Reported)
	})
	t.Run("AnthropicStreamKeepsStartUsage", func(t *testing.T) {
		t.Parallel()
		fake, ts := start(t)
		h := map[string]string{fakellm.HeaderCutAfter: "1", fakellm.HeaderInputTokens: "300", fakellm.HeaderOutputTokens: "40"}
		client := anthropicClient(ts, h)
		stream := client.Messages.NewStreaming(context.Background(), messageParams())
		for stream.Next() {
		}
		require.Error(t, stream.Err())
		rec := lastRecord(t, fake)
		require.False(t, rec.Complete)
		require.Equal(t, fakellm.Usage{InputTokens: 300, OutputTokens: 1}, rec.Reported, "message_start only")
	})
	t.Run("JSONBodyTruncated", func(t *testing.T) {
		t.Parallel()
		fake, ts := start(t)
		client := openaiClient(ts, map[string]string{fakellm.HeaderCutAfter: "20"})
		_, err := client.Chat.Completions.New(context.Background(), chatParams())
		require.Error(t, err)
		require.False(t, lastRecord(t, fake).Complete)
	})
}

func TestDelayHonoursCancellation(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := openaiClient(ts, map[string]string{fakellm.HeaderDelayMs: "600000"})
	done := make(chan error, 1)
	go func() {
		_, err := client.Chat.Completions.New(ctx, chatParams())
		done <- err
	}()
	// Cancel once the handler is waiting out its delay (not on a timer: a loaded machine may
	// not have delivered the request yet).
	require.Eventually(t, func() bool { return fake.Delayed() == 1 }, time.Minute, time.Millisecond,
		"the request reaches the handler's delay")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled, "the client sees its own cancellation")
	// The handler notices the cancellation and records the request long before the 10-minute
	// delay would end.
	require.Eventually(t, func() bool { return fake.Count() == 1 && fake.Busy() == 0 }, time.Minute, time.Millisecond,
		"the cancelled request is recorded")
	rec := lastRecord(t, fake)
	require.Equal(t, 499, rec.Status, "a request cancelled during its delay is recorded as 499 (client closed)")
	require.False(t, rec.Complete, "a cancelled request is not complete")
	require.Zero(t, fake.Delayed(), "no request is left waiting")
}

func TestGemini(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	h := map[string]string{fakellm.HeaderInputTokens: "10", fakellm.HeaderOutputTokens: "20", fakellm.HeaderReasoningTokens: "5", fakellm.HeaderCachedTokens: "3"}
	body := `{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100}}`
	type geminiResp struct {
		Candidates []struct {
			FinishReason string `json:"finishReason"`
		} `json:"candidates"`
		UsageMetadata struct {
			PromptTokenCount        int64 `json:"promptTokenCount"`
			CandidatesTokenCount    int64 `json:"candidatesTokenCount"`
			CachedContentTokenCount int64 `json:"cachedContentTokenCount"`
			ThoughtsTokenCount      int64 `json:"thoughtsTokenCount"`
			TotalTokenCount         int64 `json:"totalTokenCount"`
		} `json:"usageMetadata"`
		ModelVersion string `json:"modelVersion"`
	}

	res := post(t, ts, "/v1beta/models/gemini-2.5-flash:generateContent", body, h)
	require.Equal(t, "application/json", res.Header.Get("content-type"))
	var r geminiResp
	require.NoError(t, json.NewDecoder(res.Body).Decode(&r))
	require.Equal(t, int64(10), r.UsageMetadata.PromptTokenCount)
	require.Equal(t, int64(20), r.UsageMetadata.CandidatesTokenCount)
	require.Equal(t, int64(5), r.UsageMetadata.ThoughtsTokenCount)
	require.Equal(t, int64(3), r.UsageMetadata.CachedContentTokenCount)
	require.Equal(t, int64(35), r.UsageMetadata.TotalTokenCount)
	require.Equal(t, "gemini-2.5-flash", r.ModelVersion)
	require.Equal(t, "STOP", r.Candidates[0].FinishReason)

	res = post(t, ts, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", body, h)
	require.Contains(t, res.Header.Get("content-type"), "text/event-stream")
	var last geminiResp
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			require.NoError(t, json.Unmarshal([]byte(data), &last))
		}
	}
	require.NoError(t, sc.Err())
	require.Equal(t, int64(20), last.UsageMetadata.CandidatesTokenCount)
	require.Equal(t, int64(35), last.UsageMetadata.TotalTokenCount)
	rec := lastRecord(t, fake)
	require.Equal(t, "gemini", rec.API)
	require.True(t, rec.Stream)
	require.Equal(t, fakellm.Usage{InputTokens: 10, OutputTokens: 20, CachedTokens: 3, ReasoningTokens: 5}, rec.Reported)
}

func post(t *testing.T, ts *httptest.Server, path, body string, headers map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("content-type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := ts.Client().Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = res.Body.Close() })
	require.Equal(t, http.StatusOK, res.StatusCode)
	return res
}

func TestRecordsAreSafeForConcurrentUse(t *testing.T) {
	t.Parallel()
	fake, ts := start(t)
	client := openaiClient(ts, map[string]string{fakellm.HeaderOutputTokens: "3"})
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := client.Chat.Completions.New(context.Background(), chatParams())
			errs <- err
			_ = fake.Requests() // concurrent reads while requests are recorded
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	recs := served(t, fake)
	require.Len(t, recs, n)
	seen := map[int]bool{}
	for _, rec := range recs {
		require.False(t, seen[rec.Seq], "sequence numbers are unique")
		seen[rec.Seq] = true
	}

	// The same records over HTTP, for docker-compose users.
	res, err := ts.Client().Get(ts.URL + "/_fake/requests")
	require.NoError(t, err)
	defer res.Body.Close()
	var overHTTP []fakellm.Record
	require.NoError(t, json.NewDecoder(res.Body).Decode(&overHTTP))
	require.Equal(t, recs, overHTTP)
	fake.Reset()
	require.Zero(t, fake.Count())
}

func TestUnknownPath(t *testing.T) {
	t.Parallel()
	_, ts := start(t)
	res, err := ts.Client().Post(ts.URL+"/v1/images/generations", "application/json", strings.NewReader("{}"))
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Contains(t, string(b), `"error"`)
}
