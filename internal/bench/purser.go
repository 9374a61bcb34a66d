package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BuildTags are the build tags of a release build (Makefile, Dockerfile): vtprotobuf switches
// on go-control-plane's generated marshallers, which package grpccodec uses.
const BuildTags = "vtprotobuf"

// BuildPurser builds ./cmd/purser into dir and returns the binary's path.
func BuildPurser(ctx context.Context, dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "purser")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", BuildTags, "-o", bin, "./cmd/purser")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/purser: %w\n%s", err, out)
	}
	return bin, nil
}

// FreeAddr returns a 127.0.0.1 address whose port was free a moment ago. Another process
// may take it before it is used: callers retry on bind failure.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// Purser is a running `purser serve` subprocess.
type Purser struct {
	GRPCAddr string
	HTTPAddr string

	cmd    *exec.Cmd
	log    *tailBuffer
	done   chan struct{}
	errMu  sync.Mutex
	waited error
}

// PurserOptions configures StartPurser.
type PurserOptions struct {
	DatabaseURL string
	// Args are extra `purser serve` flags (e.g. -hot-pool-size 4).
	Args []string
	// ReadyTimeout bounds the wait for /readyz (default 30s).
	ReadyTimeout time.Duration
	// Log, when set, also receives the process's stderr.
	Log io.Writer
	// GRPCAddr and HTTPAddr, when set, are where the process listens (a restarted process
	// keeps its predecessor's addresses); otherwise free loopback ports are chosen.
	GRPCAddr, HTTPAddr string
}

// StartPurser starts `bin serve` and waits until /readyz answers 200. It retries when a port
// was taken between choosing and binding it (with new free ports unless they were given).
func StartPurser(ctx context.Context, bin string, o PurserOptions) (*Purser, error) {
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 30 * time.Second
	}
	var lastErr error
	for range 5 {
		p, err := startOnce(ctx, bin, o)
		if err == nil {
			return p, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, bin string, o PurserOptions) (*Purser, error) {
	grpcAddr, httpAddr := o.GRPCAddr, o.HTTPAddr
	for _, a := range []*string{&grpcAddr, &httpAddr} {
		if *a == "" {
			var err error
			if *a, err = FreeAddr(); err != nil {
				return nil, err
			}
		}
	}
	args := append([]string{"serve", "-database-url", o.DatabaseURL, "-grpc-addr", grpcAddr, "-http-addr", httpAddr}, o.Args...)
	cmd := exec.Command(bin, args...)
	cmd.Env = hermeticEnv()
	p := &Purser{GRPCAddr: grpcAddr, HTTPAddr: httpAddr, cmd: cmd, log: &tailBuffer{max: 64 << 10}, done: make(chan struct{})}
	var w io.Writer = p.log
	if o.Log != nil {
		w = io.MultiWriter(p.log, o.Log)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start purser: %w", err)
	}
	go func() {
		err := cmd.Wait()
		p.errMu.Lock()
		p.waited = err
		p.errMu.Unlock()
		close(p.done)
	}()
	if err := p.waitReady(ctx, o.ReadyTimeout); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// hermeticEnv is the environment without PURSER_* and DATABASE_URL: flags say everything.
func hermeticEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PURSER_") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// waitReady polls /readyz until it answers 200, the process exits, or the timeout passes.
func (p *Purser) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	url := "http://" + p.HTTPAddr + "/readyz"
	for {
		select {
		case <-p.done:
			return fmt.Errorf("purser exited before it was ready (%v): %s", p.exitErr(), p.Log())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := client.Get(url); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("purser not ready after %s: %s", timeout, p.Log())
		}
		select {
		case <-p.done:
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *Purser) exitErr() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.waited
}

// Pid is the process id.
func (p *Purser) Pid() int { return p.cmd.Process.Pid }

// Log returns the tail of the process's output.
func (p *Purser) Log() string { return p.log.String() }

// Exited reports whether the process has ended.
func (p *Purser) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop asks the process to shut down (SIGTERM) and kills it if it has not exited within
// timeout. It returns the process's exit error, if any besides the signal.
func (p *Purser) Stop(timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.exitErr()
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("purser did not stop within %s; killed", timeout)
	}
}

// Kill ends the process at once and waits for it.
func (p *Purser) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Metrics fetches /metrics.
func (p *Purser) Metrics(ctx context.Context) (Metrics, error) {
	return FetchMetrics(ctx, "http://"+p.HTTPAddr+"/metrics")
}

// Metrics is a Prometheus text exposition, kept as lines.
type Metrics []string

// FetchMetrics reads a Prometheus text endpoint.
func FetchMetrics(ctx context.Context, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var out Metrics
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && line[0] != '#' {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

// Sum adds the samples of metric name whose labels include every label="value" given.
func (m Metrics) Sum(name string, labels ...string) float64 {
	var total float64
	for _, line := range m {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue // a longer metric name
		}
		sp := strings.LastIndexByte(rest, ' ')
		if sp < 0 {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest[:sp], l) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(rest[sp+1:], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// Has reports whether any sample of metric name is present.
func (m Metrics) Has(name string) bool {
	for _, line := range m {
		if strings.HasPrefix(line, name) && len(line) > len(name) && (line[len(name)] == '{' || line[len(name)] == ' ') {
			return true
		}
	}
	return false
}

// Verify runs `bin verify` on the database and returns its exit code and output.
func Verify(ctx context.Context, bin, databaseURL string) (int, string, error) {
	cmd := exec.CommandContext(ctx, bin, "verify", "-database-url", databaseURL)
	cmd.Env = hermeticEnv()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out), nil
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out), nil
	default:
		return -1, string(out), err
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if over := t.b.Len() - t.max; over > 0 {
		t.b.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.String()
}
