package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/internal/testkit"
)

// TestDemo_PiecesStartAndAnswer runs what `make demo` runs, on free ports: the seeded key
// calls the fake provider through the Envoy stand-in playing envoy/envoy.yaml, purser reserves
// and settles it at the price of the reported usage, and the printed instructions name the
// addresses that answered.
func TestDemo_PiecesStartAndAnswer(t *testing.T) {
	s := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := bench.BuildPurser(ctx, t.TempDir())
	require.NoError(t, err)

	var out, logs testkit.SyncBuffer
	runCtx, stop := context.WithCancel(ctx)
	ready := make(chan Demo, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(runCtx, []string{"-purser", bin, "-database-url", s.ConnString, "-envoy-addr", "127.0.0.1:0",
			"-llm-addr", "127.0.0.1:0", "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0"},
			func(string) string { return "" }, &out, &logs, ready)
	}()
	var d Demo
	select {
	case d = <-ready:
	case err := <-done:
		t.Fatalf("demo stopped: %v\n%s", err, logs.String())
	}
	require.True(t, strings.HasPrefix(d.Key, "pk_"), "the seeded demo key")
	printed := out.String()
	for _, want := range []string{d.EnvoyURL, d.LLMURL, d.Key, "from openai import OpenAI", "bin/purser status team:demo"} {
		require.Contains(t, printed, want)
	}

	// The first printed curl, as Go. On a machine so loaded that purser cannot decide within
	// envoy.yaml's 0.5 s, the stand-in fails closed with a 503 and nothing reaches the
	// provider: that is the config working, so the call is repeated (a client's retry).
	var res *http.Response
	var body []byte
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, err := http.NewRequest(http.MethodPost, d.EnvoyURL+"/v1/chat/completions",
			strings.NewReader(`{"model":"gpt-4o-mini","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+d.Key)
		req.Header.Set("content-type", "application/json")
		req.Header.Set("x-fake-input-tokens", "1200")
		req.Header.Set("x-fake-output-tokens", "300")
		res, err = http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ = io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "budget_service_unavailable") || time.Now().After(deadline) {
			break
		}
	}
	require.Equal(t, http.StatusOK, res.StatusCode, "%s\npurser log:\n%s", body, logs.String())
	require.Contains(t, string(body), `"prompt_tokens":1200`)
	require.NotEmpty(t, res.Header.Get("x-budget-remaining"), "purser's budget headers reached the client")

	// purser settled it from the usage: 1200 x $0.15/M + 300 x $0.60/M = 180 + 180 micro-USD.
	require.Eventually(t, func() bool {
		var n int
		_ = s.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations WHERE state = 'settled' AND cause = 'usage' AND actual_cost = 360`).Scan(&n)
		return n == 1
	}, 30*time.Second, 20*time.Millisecond, "the demo request settles at its real price")

	// The admin API answers on the printed address.
	areq, err := http.NewRequest(http.MethodGet, d.PurserHTTP+"/v1/status?subject=team:demo", nil)
	require.NoError(t, err)
	areq.Header.Set("Authorization", "Bearer "+d.AdminToken)
	ares, err := http.DefaultClient.Do(areq)
	require.NoError(t, err)
	ares.Body.Close()
	require.Equal(t, http.StatusOK, ares.StatusCode)

	stop()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not stop")
	}
}
