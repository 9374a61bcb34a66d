package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/envoy"
	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/internal/envoysim"
)

// 10. The same world with a real Envoy (ENVOY_BIN, 1.38+) instead of envoysim: envoy-demo.yaml
// rendered for this test's ports (envoysim.RenderForEnvoy), the process started, and a smoke
// scenario: a refund, a stream, a denial, each checked in the ledger.
func scenarioRealEnvoy(t *testing.T, bin string) {
	envoyBin := os.Getenv("ENVOY_BIN")
	if envoyBin == "" {
		t.Skip("ENVOY_BIN not set: the real-Envoy scenario needs an envoy binary (1.38+); Docker is not used")
	}
	st := newStack(t, bin, stackOpts{noSim: true})
	st.baseURL = startRealEnvoy(t, envoyBin, st)
	ctx := context.Background()
	keyID, secret := st.key("real-envoy")
	b := st.budget("key tiny", "key:"+keyID, 1000, "day")

	_, err := st.openai(secret, usage(40, 60)).Chat.Completions.New(ctx, chat(500))
	require.NoError(t, err)
	r1 := st.assertSettledAtReportedPrice(st.lastRequestID())
	require.EqualValues(t, 42, *r1.Actual)

	p := chat(500)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	s := st.openai(secret, usage(30, 70)).Chat.Completions.NewStreaming(ctx, p)
	for s.Next() {
	}
	require.NoError(t, s.Err())
	r2 := st.assertSettledAtReportedPrice(st.lastRequestID())

	_, err = st.openai(secret, nil).Chat.Completions.New(ctx, chat(2000))
	apiErr, ok := errors.AsType[*openai.Error](err)
	require.True(t, ok, "%T %v", err, err)
	require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)

	posted, pending := st.window(b)
	require.Equal(t, *r1.Actual+*r2.Actual, posted)
	require.Zero(t, pending)
	st.verify()
}

// startRealEnvoy renders envoy-demo.yaml for the stack's purser and fake upstream, starts
// Envoy and waits until its admin interface reports LIVE. It returns the listener's URL.
func startRealEnvoy(t *testing.T, envoyBin string, st *stack) string {
	t.Helper()
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	require.NoError(t, os.MkdirAll(secrets, 0o755))
	names, err := fs.Glob(envoy.Files, "secrets/*.yaml")
	require.NoError(t, err)
	for _, n := range names {
		b, err := envoy.Files.ReadFile(n)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(secrets, filepath.Base(n)), b, 0o600))
	}
	src, err := envoy.Files.ReadFile("envoy-demo.yaml")
	require.NoError(t, err)
	var addrs []string
	for _, p := range st.pursers {
		addrs = append(addrs, p.GRPCAddr)
	}
	upstream := strings.TrimPrefix(st.fakeURL, "http://")
	for range 5 {
		listen, admin := port(t), port(t)
		cfg, err := envoysim.RenderForEnvoy(src, envoysim.RenderOptions{
			ListenerPort: listen, AdminPort: admin, GRPC: map[string][]string{st.cfg.ExtAuthz.Cluster: addrs},
			Upstream: upstream, SecretsDir: secrets,
		})
		require.NoError(t, err)
		path := filepath.Join(dir, "envoy.json")
		require.NoError(t, os.WriteFile(path, cfg, 0o600))
		// One writer for both streams: exec copies into it from one goroutine, and the log
		// is read only after Wait (done) returned.
		log := &bytes.Buffer{}
		cmd := exec.Command(envoyBin, "-c", path, "--concurrency", "2", "--disable-hot-restart",
			"--base-id", strconv.Itoa(rand.IntN(1<<20)), "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = log, log
		require.NoError(t, cmd.Start())
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-done
		}
		if waitEnvoyLive(admin, done) {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("envoy log (tail):\n%s", tail(log.String(), 6000))
				}
			})
			return "http://127.0.0.1:" + strconv.Itoa(listen)
		}
		stop()
		t.Logf("envoy did not become ready (retrying on new ports):\n%s", tail(log.String(), 3000))
	}
	t.Fatal("envoy did not start")
	return ""
}

func port(t *testing.T) int {
	addr, err := bench.FreeAddr()
	require.NoError(t, err)
	_, p, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	n, err := strconv.Atoi(p)
	require.NoError(t, err)
	return n
}

// waitEnvoyLive polls the admin /ready endpoint until it answers LIVE, Envoy exits or 30 s pass.
func waitEnvoyLive(admin int, done <-chan struct{}) bool {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return false
		default:
		}
		if res, err := client.Get("http://127.0.0.1:" + strconv.Itoa(admin) + "/ready"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}
