package main

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/internal/testkit"
)

func TestRun_ServesAndShutsDown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var logs testkit.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-addr", "127.0.0.1:0"}, &logs) }()

	addrRE := regexp.MustCompile(`msg=listening addr=(\S+)`)
	var addr string
	require.Eventually(t, func() bool {
		m := addrRE.FindStringSubmatch(logs.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}, 5*time.Second, 5*time.Millisecond)

	require.NoError(t, run(context.Background(), []string{"-check", "http://" + addr + "/healthz"}, &logs))
	require.Error(t, run(context.Background(), []string{"-check", "http://" + addr + "/nope"}, &logs))

	cancel() // what SIGTERM does in main
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("no graceful shutdown")
	}
	require.Contains(t, logs.String(), "shutting down")
}

func TestRun_BadFlag(t *testing.T) {
	var logs testkit.SyncBuffer
	require.Error(t, run(context.Background(), []string{"-nope"}, &logs))
}
