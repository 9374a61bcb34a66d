package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/extauthz"
)

func testEnv(vars map[string]string) env {
	return env{getenv: func(k string) string { return vars[k] }, stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}
}

func TestParseServeConfig_Errors(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args []string
		env  map[string]string
		msg  string
	}{
		"BadAddr":        {[]string{"-grpc-addr", "9000"}, nil, `-grpc-addr "9000": want host:port`},
		"ShortToken":     {nil, map[string]string{"PURSER_ADMIN_TOKEN": "short"}, "each token must be at least 16 characters"},
		"BadEnvDuration": {nil, map[string]string{"PURSER_CHECK_TIMEOUT": "fast"}, `PURSER_CHECK_TIMEOUT="fast": not a duration`},
		"CheckTimeout":   {[]string{"-check-timeout", "5ms"}, nil, "-check-timeout 5ms: want 10ms-1m"},
		"LogLevel":       {[]string{"-log-level", "loud"}, nil, `-log-level "loud"`},
		"HotPool":        {[]string{"-hot-pool-size", "0"}, nil, "-hot-pool-size 0: want 1-64"},
		"Retention":      {nil, map[string]string{"PURSER_RETENTION": "12h"}, "-retention 12h0m0s: want 0 (keep everything) or at least 24h0m0s"},
		"PruneInterval":  {[]string{"-retention", "720h", "-prune-interval", "1s"}, nil, "-prune-interval 1s: want at least 1m"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := parseServeConfig(testEnv(c.env), c.args)
			require.ErrorContains(t, err, c.msg)
		})
	}
	cfg, err := parseServeConfig(testEnv(map[string]string{"PURSER_ADMIN_TOKEN": "0123456789abcdef, fedcba9876543210"}), []string{"-grpc-addr", ":9999", "-insecure-grpc"})
	require.NoError(t, err)
	require.Equal(t, ":9999", cfg.grpcAddr, "flags win over defaults")
	require.Equal(t, []string{"0123456789abcdef", "fedcba9876543210"}, cfg.adminTokens)
}

func TestFileConfig_Strict(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	_, err := loadFileConfig(write("typo.yaml", "policies:\n  unknwon_model: deny\n"))
	require.ErrorContains(t, err, `unknown field "unknwon_model"`)

	fc, err := loadFileConfig(write("bad.yaml", "policies:\n  unknown_model: guess\nusage:\n  provider_error: shrug\nidentity:\n  trusted_headers: [{header: authorization, subject: team}]\n"))
	require.NoError(t, err)
	err = fc.validate()
	require.ErrorContains(t, err, `policies.unknown_model: "guess": want one of [deny default_price]`)
	require.ErrorContains(t, err, `usage.provider_error: "shrug": want void or charge_hold`)
	require.ErrorContains(t, err, `carries credentials and cannot name a subject`)

	fc, err = loadFileConfig(write("ok.yaml", "identity:\n  default_subject: team:anonymous\n  jwt:\n    claims: [{claim: sub, subject: user}]\npolicies:\n  missing_output_cap: deny\nusage:\n  headers: {x-usage-in: usage.prompt_tokens}\nledger:\n  lanes: 2\n"))
	require.NoError(t, err)
	require.NoError(t, fc.validate())
	require.Equal(t, "team:anonymous", fc.extauthzConfig(0, 0).DefaultSubject)
}

// The configuration example in the README is a valid file, mapped onto every setting it
// names: a key misspelt or renamed in the docs fails here.
func TestConfigFile_READMEExample(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(b), "The configuration file (all optional")
	require.True(t, ok, "README: configuration file section")
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	require.True(t, ok, "README: yaml block")
	example, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	path := filepath.Join(t.TempDir(), "purser.yaml")
	require.NoError(t, os.WriteFile(path, []byte(example), 0o600))
	fc, err := loadFileConfig(path)
	require.NoError(t, err)
	require.NoError(t, fc.validate())
	c := fc.extauthzConfig(0, 0)
	require.Equal(t, extauthz.StreamUsageChargeHold, c.StreamWithoutUsage)
	require.Equal(t, extauthz.UnknownModelDeny, c.UnknownModel)
}

// startServe runs `purser serve` in-process on 127.0.0.1:0 against a fresh schema.
func startServe(t *testing.T, extra ...string) (grpcAddr, httpAddr string, stop func() error) {
	t.Helper()
	schema := pgtest.New(t)
	args := append([]string{"-database-url", schema.ConnString, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0"}, extra...)
	cfg, err := parseServeConfig(testEnv(nil), args)
	require.NoError(t, err)
	var logs bytes.Buffer
	srv, err := newServer(context.Background(), cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	require.NoError(t, err)
	gl, err := net.Listen("tcp", cfg.grpcAddr)
	require.NoError(t, err)
	hl, err := net.Listen("tcp", cfg.httpAddr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.serve(ctx, gl, hl) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { _ = stop() })
	return gl.Addr().String(), hl.Addr().String(), stop
}

func TestServe_HealthSecretAndShutdown(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-shared-with-envoy"
	grpcAddr, httpAddr, stop := startServe(t, "-shared-secret", secret)
	ctx := context.Background()

	resp, err := http.Get("http://" + httpAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, err = http.Get("http://" + httpAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "go_goroutines")
	resp, err = http.Get("http://" + httpAddr + "/v1/me")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the admin API is mounted")
	require.Contains(t, string(body), `"error"`)

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	hr, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
	require.NoError(t, err, "health checks need no secret")
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, hr.GetStatus())

	b, err := os.ReadFile(filepath.Join("..", "..", "extauthz", "request", "testdata", "get_models.json"))
	require.NoError(t, err)
	var req authv3.CheckRequest
	require.NoError(t, protojson.Unmarshal(b, &req))
	az := authv3.NewAuthorizationClient(conn)
	_, err = az.Check(ctx, &req)
	require.Equal(t, codes.Unauthenticated, status.Code(err), "no shared secret, no Check")
	_, err = az.Check(metadata.AppendToOutgoingContext(ctx, sharedSecretHeader, "wrong-secret-of-some-length"), &req)
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	out, err := az.Check(metadata.AppendToOutgoingContext(ctx, sharedSecretHeader, secret), &req)
	require.NoError(t, err)
	require.Equal(t, int32(codes.Unauthenticated), out.GetStatus().GetCode(), "a decided answer: the fixture's key is not a purser key")

	require.NoError(t, stop())
	_, err = http.Get("http://" + httpAddr + "/healthz")
	require.Error(t, err, "listeners are closed after shutdown")
	shortCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = hc.Check(shortCtx, &healthpb.HealthCheckRequest{})
	require.Error(t, err)
}

func TestServe_RefusesSchemaBehind(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	_, err := schema.Pool.Exec(context.Background(), `DELETE FROM purser_migrations WHERE version = (SELECT max(version) FROM purser_migrations)`)
	require.NoError(t, err)
	cfg, err := parseServeConfig(testEnv(nil), []string{"-database-url", schema.ConnString})
	require.NoError(t, err)
	_, err = newServer(context.Background(), cfg, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "run `purser migrate` first")
}

func TestVerify_ExitCode(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	ctx := context.Background()
	var out bytes.Buffer
	e := testEnv(nil)
	e.stdout = &out
	require.NoError(t, run(ctx, []string{"seed", "-database-url", schema.ConnString}, e.getenv, e.stdin, &out, io.Discard))
	require.NoError(t, run(ctx, []string{"verify", "-database-url", schema.ConnString}, e.getenv, e.stdin, &out, io.Discard))
	require.Contains(t, out.String(), "ledger reconciles")

	// Corrupt a counter: verify must say so and exit 1.
	_, err := schema.Pool.Exec(ctx, `INSERT INTO budget_windows (budget_id, window_start, window_end, posted) SELECT id, now(), now() + interval '1 day', 42 FROM budgets LIMIT 1`)
	require.NoError(t, err)
	out.Reset()
	err = run(ctx, []string{"verify", "-database-url", schema.ConnString}, e.getenv, e.stdin, &out, io.Discard)
	var ex exitError
	require.ErrorAs(t, err, &ex)
	require.Equal(t, 1, ex.code)
	require.Contains(t, out.String(), "MISMATCH")
}

// purser prune removes resolved history older than -older-than and leaves the ledger
// reconciling; it refuses a retention under a day.
func TestPrune_Command(t *testing.T) {
	t.Parallel()
	schema := pgtest.New(t)
	ctx := context.Background()
	e := testEnv(nil)
	var out bytes.Buffer
	db := []string{"-database-url", schema.ConnString}
	require.NoError(t, run(ctx, append([]string{"seed"}, db...), e.getenv, e.stdin, io.Discard, io.Discard))
	// Two reservations made and resolved 40 days ago (one settled, one voided; UUIDv7 ids of
	// that time, as purser makes them), one pending.
	_, err := schema.Pool.Exec(ctx, `
		CREATE FUNCTION pg_temp.v7(at timestamptz, n int) RETURNS uuid LANGUAGE sql AS
		  $$ SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7' || lpad(to_hex(n), 19, '0'))::uuid $$;
		INSERT INTO reservations (id, expires_at, hold_cost, hold_tokens, state, resolved_at, actual_cost, actual_tokens, model, subjects)
		VALUES (pg_temp.v7(now() - interval '40 days', 1), now(), 10, 1, 'settled', now() - interval '40 days', 7, 1, 'gpt-4o', '{team:demo}'),
		       (pg_temp.v7(now() - interval '40 days', 2), now(), 10, 1, 'voided', now() - interval '40 days', NULL, NULL, 'gpt-4o', '{team:demo}'),
		       (pg_temp.v7(now(), 3), now() + interval '1 hour', 10, 1, 'pending', NULL, NULL, NULL, 'gpt-4o', '{team:demo}')`)
	require.NoError(t, err)

	err = run(ctx, append([]string{"prune", "-older-than", "1h"}, db...), e.getenv, e.stdin, &out, io.Discard)
	var ex exitError
	require.ErrorAs(t, err, &ex)
	require.Equal(t, 2, ex.code)
	require.Contains(t, ex.msg, "-older-than 1h0m0s: want at least 24h0m0s")

	require.NoError(t, run(ctx, append([]string{"prune", "-older-than", "720h", "-dry-run"}, db...), e.getenv, e.stdin, &out, io.Discard))
	require.Contains(t, out.String(), "would prune 2 reservations resolved before ")
	out.Reset()
	require.NoError(t, run(ctx, append([]string{"prune", "-older-than", "720h"}, db...), e.getenv, e.stdin, &out, io.Discard))
	require.Contains(t, out.String(), "pruned 2 reservations and 0 holds resolved before ")
	var left int
	require.NoError(t, schema.Pool.QueryRow(ctx, `SELECT count(*) FROM reservations`).Scan(&left))
	require.Equal(t, 1, left, "the pending reservation stays")
	var rolled int64
	require.NoError(t, schema.Pool.QueryRow(ctx, `SELECT sum(cost)::bigint FROM spend_rollups WHERE subjects = '{team:demo}'`).Scan(&rolled))
	require.Equal(t, int64(7), rolled, "the settled one's spend is rolled up; the voided one spent nothing")
	require.NoError(t, run(ctx, append([]string{"verify"}, db...), e.getenv, e.stdin, io.Discard, io.Discard))
}

// Secrets given through the environment never show in -h or in a flag error.
func TestFlags_SecretsStayOutOfUsage(t *testing.T) {
	t.Parallel()
	vars := map[string]string{
		"PURSER_ADMIN_TOKEN": "admin-token-0123456789", "PURSER_SHARED_SECRET": "shared-secret-0123456789",
		"PURSER_ALERT_WEBHOOK_SECRET": "hook-secret-0123456789", "PURSER_ALERT_WEBHOOKS": "https://hooks.example/SECRETPATH",
		"DATABASE_URL": "postgres://u:dbpassword123@127.0.0.1/x",
	}
	for _, args := range [][]string{{"serve", "-h"}, {"serve", "-nope"}, {"migrate", "-h"}, {"verify", "-nope"}} {
		var stdout, stderr bytes.Buffer
		_ = run(context.Background(), args, func(k string) string { return vars[k] }, strings.NewReader(""), &stdout, &stderr)
		printed := stdout.String() + stderr.String() // -h on stdout, a flag error on stderr
		require.NotEmpty(t, printed, "%v prints the usage", args)
		for _, v := range vars {
			require.NotContains(t, printed, v, "%v", args)
		}
		require.NotContains(t, printed, "dbpassword123", "%v", args)
	}
	cfg, err := parseServeConfig(testEnv(vars), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"admin-token-0123456789"}, cfg.adminTokens, "the environment still applies")
	require.Equal(t, "postgres://u:dbpassword123@127.0.0.1/x", cfg.databaseURL)
	cfg, err = parseServeConfig(testEnv(vars), []string{"-admin-token", "flag-token-0123456789"})
	require.NoError(t, err)
	require.Equal(t, []string{"flag-token-0123456789"}, cfg.adminTokens, "a flag wins")
}

// Not parallel: the GC percent is process-wide.
func TestTuneGC_DefaultUnlessGOGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	tuneGC(func(string) string { return "150" })
	require.Equal(t, 100, debug.SetGCPercent(100), "GOGC set: the operator's choice stands")

	tuneGC(func(string) string { return "" })
	require.Equal(t, serveGCPercent, debug.SetGCPercent(100))
}
