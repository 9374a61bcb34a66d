// Command purser-demo runs the whole chain on this machine without Docker: `purser serve`
// (the binary given), the fake LLM provider of internal/fakellm, and the Envoy stand-in of
// internal/envoysim playing the shipped envoy/envoy.yaml, each on a loopback port, with a seeded
// demo key and budgets. It prints requests to try (curl, and the OpenAI SDK) and runs until
// interrupted. `make demo` builds and starts it on fixed ports; docker-compose.yaml runs the
// same chain with a real Envoy.
//
//	purser-demo -purser bin/purser [-database-url URL] [-envoy-addr 127.0.0.1:10000]
//	            [-llm-addr 127.0.0.1:8000] [-grpc-addr 127.0.0.1:9000] [-http-addr 127.0.0.1:9090]
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/purser-dev/purser/internal/bench"
	"github.com/purser-dev/purser/internal/envoysim"
	"github.com/purser-dev/purser/internal/fakellm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "purser-demo:", err)
		os.Exit(1)
	}
}

// Demo is the chain once it runs: where each piece listens and the demo key.
type Demo struct {
	EnvoyURL, LLMURL, PurserGRPC, PurserHTTP, Key, AdminToken string
}

// run starts the chain, prints the requests to try, and serves until ctx ends. ready, when
// not nil, receives the Demo once everything answers (tests).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return serve(ctx, args, getenv, stdout, stderr, nil)
}

func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready chan<- Demo) error {
	fs := flag.NewFlagSet("purser-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("purser", "bin/purser", "the purser binary (make build)")
	dsn := fs.String("database-url", nonEmpty(getenv("DATABASE_URL"), "postgres://postgres@127.0.0.1:5432/purser?sslmode=disable"), "a migrated database (make migrate)")
	envoyAddr := fs.String("envoy-addr", "127.0.0.1:10000", "where the Envoy stand-in listens (clients call this)")
	llmAddr := fs.String("llm-addr", "127.0.0.1:8000", "where the fake LLM provider listens")
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:9000", "purser's gRPC address (ext_authz, access log)")
	httpAddr := fs.String("http-addr", "127.0.0.1:9090", "purser's HTTP address (admin API, /metrics)")
	adminToken := fs.String("admin-token", nonEmpty(getenv("PURSER_ADMIN_TOKEN"), "purser-local-admin-token"), "the admin API token of this demo")
	if err := fs.Parse(args); err != nil {
		return err
	}

	// envoy.yaml sends its shared-secret placeholder on every gRPC call; purser checks it.
	cfg, err := envoysim.LoadShipped()
	if err != nil {
		return err
	}
	secret := ""
	for _, h := range cfg.ExtAuthz.InitialMetadata {
		if h.GetKey() == "x-purser-secret" {
			secret = h.GetValue()
		}
	}

	// A port another process holds (an earlier demo, make run) is said before anything
	// starts, and before seeding gives the demo key a new secret.
	for _, a := range []struct{ addr, flag string }{{*envoyAddr, "envoy-addr"}, {*llmAddr, "llm-addr"}, {*grpcAddr, "grpc-addr"}, {*httpAddr, "http-addr"}} {
		if err := portFree(a.addr, a.flag); err != nil {
			return err
		}
	}
	key, err := seed(ctx, *bin, *dsn, *httpAddr)
	if err != nil {
		return err
	}
	p, err := bench.StartPurser(ctx, *bin, bench.PurserOptions{
		DatabaseURL: *dsn, GRPCAddr: freeIfZero(*grpcAddr), HTTPAddr: freeIfZero(*httpAddr), Log: stderr,
		// 450 ms, not the 150 ms default: a laptop running all of this plus Postgres is slower
		// than a server, and envoy.yaml gives purser 500 ms.
		Args: []string{"-shared-secret", secret, "-admin-token", *adminToken, "-check-timeout", "450ms"},
	})
	if err != nil {
		return fmt.Errorf("start purser: %w", err)
	}
	defer func() { _ = p.Stop(10 * time.Second) }()

	llmLn, err := net.Listen("tcp", *llmAddr)
	if err != nil {
		return fmt.Errorf("fake LLM: %w", err)
	}
	llm := &http.Server{Handler: fakellm.New(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = llm.Serve(llmLn) }()
	defer llm.Close()
	llmURL := "http://" + llmLn.Addr().String()

	sim, err := envoysim.New(envoysim.Options{Config: cfg, GRPC: map[string][]string{cfg.ExtAuthz.Cluster: {p.GRPCAddr}}, Upstream: llmURL, Addr: *envoyAddr})
	if err != nil {
		return err
	}
	if err := sim.Start(); err != nil {
		return fmt.Errorf("envoy stand-in: %w", err)
	}
	defer sim.Close()

	d := Demo{EnvoyURL: sim.URL(), LLMURL: llmURL, PurserGRPC: p.GRPCAddr, PurserHTTP: "http://" + p.HTTPAddr, Key: key, AdminToken: *adminToken}
	printTry(stdout, d)
	if ready != nil {
		ready <- d
	}
	<-ctx.Done()
	fmt.Fprintln(stdout, "\nstopping")
	return nil
}

var secretRE = regexp.MustCompile(`(?m)^\s+(pk_\S+)\s*$`)

// portFree reports, in one sentence, an address another process listens on.
func portFree(addr, flagName string) error {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		return l.Close()
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%s is already in use (another `make demo` or `make run` still running?): stop that process, or choose another address with -%s", addr, flagName)
	}
	return fmt.Errorf("-%s %s: %w", flagName, addr, err)
}

// seed runs `purser seed -rotate` and returns the demo key's secret. The seed is idempotent,
// but a secret is shown only once, so each demo start gives the demo key a new one (printed
// with the demo's instructions, which say the previous one stopped working).
func seed(ctx context.Context, bin, dsn, httpAddr string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "seed", "-rotate", "-database-url", dsn, "-http-addr", httpAddr)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("purser seed: %w\n%s", err, out.String())
	}
	m := secretRE.FindStringSubmatch(out.String())
	if m == nil {
		return "", errors.New("purser seed printed no demo key")
	}
	return m[1], nil
}

func printTry(w io.Writer, d Demo) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, `
purser demo is running (Ctrl-C stops it):
  Envoy stand-in (envoy/envoy.yaml)  %s        <- call this
  fake LLM provider                  %s
  purser gRPC / HTTP                 %s / %s
  demo key                           %s
                                     (new at each start: the previous demo key's secret no longer works)

Try (the x-fake-* headers choose the usage the fake provider reports):

  curl -s %s/v1/chat/completions \
    -H 'Authorization: Bearer %s' -H 'content-type: application/json' \
    -H 'x-fake-input-tokens: 1200' -H 'x-fake-output-tokens: 300' \
    -d '{"model":"gpt-4o-mini","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}'

  # streamed, with usage:
  curl -sN %s/v1/chat/completions \
    -H 'Authorization: Bearer %s' -H 'content-type: application/json' \
    -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}'

  # the OpenAI SDK (Python), unchanged but for its base URL and key:
  python3 -c 'from openai import OpenAI; c = OpenAI(base_url="%s/v1", api_key="%s"); print(c.chat.completions.create(model="gpt-4o-mini", max_tokens=50, messages=[{"role":"user","content":"hi"}]).usage)'

  # what it cost, and the missing-usage watchdog:
  PURSER_ADDR=%s PURSER_ADMIN_TOKEN=%s bin/purser status team:demo
  curl -s -H 'Authorization: Bearer %s' %s/v1/me
  bin/purser doctor -envoy envoy/envoy.yaml
`, d.EnvoyURL, d.LLMURL, d.PurserGRPC, d.PurserHTTP, d.Key,
		d.EnvoyURL, d.Key, d.EnvoyURL, d.Key, d.EnvoyURL, d.Key,
		d.PurserHTTP, d.AdminToken, d.Key, d.PurserHTTP)
}

// freeIfZero turns a ":0" address into "" (bench.StartPurser then picks free ports).
func freeIfZero(addr string) string {
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		return ""
	}
	return addr
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
