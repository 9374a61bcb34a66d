package pricing

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRunCost(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	const zeroUsage = `"cache_read_tokens":0,"cache_write_tokens":0,"reasoning_tokens":0,"input_audio_tokens":0,"output_audio_tokens":0,"cache_audio_read_tokens":0`
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			// gpt-4o-mini: 7 × 0.15 = 1.05 → 0.000002 USD.
			name: "TinyChat",
			in:   `{"provider": "openai", "api_flavor": "chat", "body": {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 0}}}`,
			want: []string{`{"model":"gpt-4o-mini","provider":"openai","usage":{"input_tokens":7,"output_tokens":0,` + zeroUsage + `},"input_cost":"0.000002","output_cost":"0.000000","total_cost":"0.000002"}`},
		},
		{
			// Flavour inferred (Anthropic shape), model from the line. claude-sonnet-4-5:
			// 100 × 3 + 1000 × 3.75 + 2000 × 0.3 = 4650; 50 × 15 = 750.
			name: "InferredAnthropic",
			in: `{"provider": "anthropic", "model": "claude-sonnet-4-5", "body": {"usage": {"input_tokens": 100, ` +
				`"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 50}}}`,
			want: []string{`{"model":"claude-sonnet-4-5","provider":"anthropic","usage":{"input_tokens":3100,"output_tokens":50,"cache_read_tokens":2000,"cache_write_tokens":1000,"reasoning_tokens":0,"input_audio_tokens":0,"output_audio_tokens":0,"cache_audio_read_tokens":0},"input_cost":"0.004650","output_cost":"0.000750","total_cost":"0.005400"}`},
		},
		{
			name: "ErrorsDoNotStop",
			in: "not json\n" +
				`{"provider": "openai", "body": {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}}` + "\n" +
				`{"provider": "openai", "flavor": "chat", "body": {}}` + "\n" +
				`{"provider": "openai", "body": {"model": "gpt-4o", "choices": []}}` + "\n" +
				`{"provider": "openai", "body": {"model": "gpt-4o", "usage": {"prompt_tokens": 1}}}` + "\n" +
				`{"provider": "openai"}` + "\n" +
				`{"provider": "openai", "body": {"model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}} {}` + "\n" +
				`{"provider": "openai", "body": {"model": "gpt-4o", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}}`,
			want: []string{
				`{"error":"line 1: invalid input: invalid character 'o' in literal null (expecting 'u')"}`,
				`{"error":"line 2: unknown model: no model given and none in the response"}`,
				`{"error":"line 3: invalid input: json: unknown field \"flavor\""}`,
				`{"error":"line 4: no usage in response: no usage object of a known shape"}`,
				`{"error":"line 5: incomplete usage: usage.completion_tokens: missing"}`,
				`{"error":"line 6: invalid input: missing body"}`,
				`{"error":"line 7: invalid input: more than one JSON value on the line"}`,
				// gpt-4o: 1000 × 2.5 = 2500; 100 × 10 = 1000.
				`{"model":"gpt-4o","provider":"openai","usage":{"input_tokens":1000,"output_tokens":100,` + zeroUsage + `},"input_cost":"0.002500","output_cost":"0.001000","total_cost":"0.003500"}`,
			},
		},
		{
			name: "BlankLinesAndCRLF",
			in:   "\n  \r\n" + `{"provider": "openai", "body": {"model": "text-embedding-3-small", "usage": {"prompt_tokens": 1234, "total_tokens": 1234}}}` + "\r\n\n",
			// 1234 × 0.02 = 24.68 → 25.
			want: []string{`{"model":"text-embedding-3-small","provider":"openai","usage":{"input_tokens":1234,"output_tokens":0,` + zeroUsage + `},"input_cost":"0.000025","output_cost":"0.000000","total_cost":"0.000025"}`},
		},
		{
			// o3's prices fell on 2025-06-10 (catalog TestModel_CostAtPriceList): each line is
			// priced at its own instant. 1000 × 10 + 1000 × 40 = 50000; 1000 × 2 + 1000 × 8 = 10000.
			name: "PricedAtTheLinesInstant",
			in: `{"provider": "openai", "at": "2025-06-09T23:59:59Z", "body": {"model": "o3", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}}` + "\n" +
				`{"provider": "openai", "at": "2025-06-10T02:00:00+02:00", "body": {"model": "o3", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}}` + "\n" +
				`{"provider": "openai", "at": "yesterday", "body": {"model": "o3", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}}`,
			want: []string{
				`{"at":"2025-06-09T23:59:59Z","model":"o3","provider":"openai","usage":{"input_tokens":1000,"output_tokens":1000,` + zeroUsage + `},"input_cost":"0.010000","output_cost":"0.040000","total_cost":"0.050000"}`,
				// 02:00+02:00 is midnight UTC: the new prices.
				`{"at":"2025-06-10T02:00:00+02:00","model":"o3","provider":"openai","usage":{"input_tokens":1000,"output_tokens":1000,` + zeroUsage + `},"input_cost":"0.002000","output_cost":"0.008000","total_cost":"0.010000"}`,
				`{"error":"line 3: invalid input: at: want an RFC 3339 time such as \"2026-01-02T15:04:05Z\", got \"yesterday\""}`,
			},
		},
		{
			name: "ExplicitIncompleteUsage",
			in:   `{"provider": "openai", "api_flavor": "chat", "body": {"model": "gpt-4o", "usage": {"prompt_tokens": 1}}}`,
			want: []string{`{"error":"line 1: incomplete usage: usage.completion_tokens: missing"}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			require.NoError(t, RunCost(context.Background(), c, strings.NewReader(tt.in), &out))
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			require.Len(t, got, len(tt.want), out.String())
			for i := range got {
				require.JSONEq(t, tt.want[i], got[i])
			}
		})
	}
}

func TestRunCost_LongLine(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	long := `{"provider": "openai", "body": {"pad": "` + strings.Repeat("x", MaxCostLine) + `"}}`
	good := `{"provider": "openai", "body": {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 0}}}`
	var out bytes.Buffer
	require.NoError(t, RunCost(context.Background(), c, strings.NewReader(long+"\n"+good+"\n"+long), &out))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, 3)
	require.JSONEq(t, `{"error":"line 1: longer than 10485760 bytes"}`, lines[0])
	require.Contains(t, lines[1], `"total_cost":"0.000002"`)
	require.JSONEq(t, `{"error":"line 3: longer than 10485760 bytes"}`, lines[2])
}

func TestReadLine(t *testing.T) {
	t.Parallel()
	br := bufio.NewReaderSize(strings.NewReader("12345\n123456\n1234\r\n123456"), 16)
	line, long, err := readLine(br, 5)
	require.NoError(t, err)
	require.False(t, long)
	require.Equal(t, "12345", string(line))
	_, long, err = readLine(br, 5)
	require.NoError(t, err)
	require.True(t, long)
	line, long, err = readLine(br, 5)
	require.NoError(t, err)
	require.False(t, long)
	require.Equal(t, "1234", string(line))
	_, long, err = readLine(br, 5)
	require.ErrorIs(t, err, io.EOF)
	require.True(t, long)
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestRunCost_Errors(t *testing.T) {
	t.Parallel()
	c := testCatalog(t)
	in := `{"provider": "openai", "body": {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 0}}}`

	err := RunCost(context.Background(), c, strings.NewReader(in), failWriter{})
	require.EqualError(t, err, "write output: disk full")

	err = RunCost(context.Background(), c, failReader{}, io.Discard)
	require.EqualError(t, err, "read input: broken pipe")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = RunCost(ctx, c, strings.NewReader(in), io.Discard)
	require.ErrorIs(t, err, context.Canceled)
}

// FuzzRunCost: any input line gets exactly one JSON answer line (a price or an error), and
// RunCost itself fails only on I/O.
func FuzzRunCost(f *testing.F) {
	for _, s := range []string{
		`{"provider": "openai", "at": "2025-06-09T23:59:59Z", "body": {"model": "o3", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}}`,
		`{"provider": "openai", "at": "", "body": {}}`,
		`{"at": 12}`,
		`{"provider": "anthropic", "model": "claude-sonnet-4-5", "at": "9999-12-31T23:59:59.999999999+14:00", "body": {"usage": {"input_tokens": 1, "output_tokens": 2}}}`,
		"not json",
	} {
		f.Add(s)
	}
	c := testCatalog(f)
	f.Fuzz(func(t *testing.T, line string) {
		if strings.ContainsAny(line, "\r\n") || strings.TrimSpace(line) == "" {
			return
		}
		var out bytes.Buffer
		require.NoError(t, RunCost(context.Background(), c, strings.NewReader(line), &out))
		got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		require.Len(t, got, 1, "one answer per line: %q", out.String())
		var v map[string]any
		require.NoError(t, json.Unmarshal([]byte(got[0]), &v))
		_, isErr := v["error"]
		_, isCost := v["total_cost"]
		require.True(t, isErr != isCost, "either a price or an error: %s", got[0])
	})
}
