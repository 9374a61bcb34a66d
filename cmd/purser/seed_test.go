package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store/pgtest"
)

var seedSecretRE = regexp.MustCompile(`(?m)^\s+(pk_\S+)\s*$`)

// Re-running `purser seed` (what `make run` does each time) keeps the demo key and its
// budgets, prints no secret and says so; -rotate replaces the secret and says that.
func TestSeed_RerunKeepsDemoKey(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	ctx := context.Background()
	e := testEnv(nil)
	seed := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, run(ctx, append([]string{"seed", "-database-url", schema.ConnString}, args...), e.getenv, e.stdin, &out, io.Discard),
			"purser seed %v", args)
		return out.String()
	}
	first := seed()
	m := seedSecretRE.FindStringSubmatch(first)
	require.NotNil(t, m, "the first run prints the new demo key's secret:\n%s", first)
	require.Contains(t, first, "(hard; created)", "the first run says it created the budgets")

	second := seed()
	require.NotRegexp(t, seedSecretRE, second, "a re-run prints no new secret (the key is kept)")
	require.Contains(t, second, "demo API key: kept from an earlier run", "a re-run says it kept the key")
	require.Contains(t, second, "purser seed -rotate", "a re-run says how to get a new secret")
	require.NotContains(t, second, "(hard; created)", "a re-run creates no budget")
	var live int
	require.NoError(t, schema.Pool.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE name = 'demo' AND revoked_at IS NULL`).Scan(&live))
	require.Equal(t, 1, live, "one live demo key after two runs")

	third := seed("-rotate")
	m3 := seedSecretRE.FindStringSubmatch(third)
	require.NotNil(t, m3, "-rotate prints the new secret:\n%s", third)
	require.NotEqual(t, m[1], m3[1], "-rotate gives a new secret")
	require.Contains(t, third, "ROTATED", "-rotate says the old secret stopped working")
}

// A listen address another process holds is reported in one sentence that names the address
// and the flag and variable choosing another.
func TestListen_PortInUse(t *testing.T) {
	t.Parallel()
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	addr := held.Addr().String()
	_, err = listen(addr, "http-addr", "PURSER_HTTP_ADDR")
	var ex exitError
	require.ErrorAs(t, err, &ex, "a busy port is an exitError (one line, no wrapped socket errors)")
	require.Equal(t, 1, ex.code, "exit status 1")
	require.Equal(t, addr+" is already in use (another purser, `make run` or `make demo` still running?): "+
		"stop that process, or choose another address with -http-addr or PURSER_HTTP_ADDR", ex.msg, "the message names the port and how to change it")
}
