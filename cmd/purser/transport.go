package main

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// The gRPC listener's protections. Who may call Check and StreamAccessLogs is decided before a
// call costs anything: the TLS handshake (mTLS), then a tap on every new stream (shared secret),
// which also marks the call authenticated — what extauthz and accesslog consult before they
// believe identity claims or take entries without a proof.

// authnKey marks a call's context as coming from an authenticated Envoy.
type authnKey struct{}

// authenticated reports whether the call came from an authenticated Envoy (see grpcTap).
func authenticated(ctx context.Context) bool {
	v, _ := ctx.Value(authnKey{}).(bool)
	return v
}

// isLoopback reports whether a listen address only accepts connections from this host.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// grpcTap checks each new call's credentials before the server spends a goroutine on it
// (grpc.InTapHandle), then hands it to next (the access-log sink's tap).
type grpcTap struct {
	secret string // "" when none is required
	mtls   bool   // the listener verified a client certificate on every connection
	mesh   bool   // a service mesh authenticated every caller (-grpc-mesh-authn)
	next   tap.ServerInHandle
}

func (g *grpcTap) handle(ctx context.Context, info *tap.Info) (context.Context, error) {
	if !guarded(info.FullMethodName) {
		return ctx, nil
	}
	ok := g.mesh || (g.mtls && verifiedPeer(ctx))
	if g.secret != "" {
		if !secretIn(info.Header.Get(sharedSecretHeader), g.secret) {
			return nil, status.Error(codes.Unauthenticated, "missing or wrong "+sharedSecretHeader)
		}
		ok = true
	}
	ctx = context.WithValue(ctx, authnKey{}, ok)
	if g.next != nil {
		return g.next(ctx, info)
	}
	return ctx, nil
}

func secretIn(values []string, secret string) bool {
	for _, v := range values {
		if subtle.ConstantTimeCompare([]byte(v), []byte(secret)) == 1 {
			return true
		}
	}
	return false
}

// verifiedPeer reports whether the connection's client presented a certificate that chained
// to the client CA (the handshake refuses any other, so this holds for every mTLS call).
func verifiedPeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(ti.State.VerifiedChains) > 0
}

// tlsFiles holds the gRPC listener's certificate, key and client CA, re-read when a file
// changes (checked at most once a second, on a handshake): rotating a certificate needs no
// restart. A file that fails to load leaves the previous material in force.
type tlsFiles struct {
	cert, key, clientCA string
	clientNames         []string // allowed URI/DNS SANs of client certificates; none: any
	log                 *slog.Logger

	mu      sync.Mutex
	checked time.Time
	mtimes  [3]time.Time
	current atomic.Pointer[tls.Config]
}

func newTLSFiles(cert, key, clientCA string, clientNames []string, log *slog.Logger) (*tlsFiles, error) {
	f := &tlsFiles{cert: cert, key: key, clientCA: clientCA, clientNames: clientNames, log: log}
	if err := f.load(); err != nil {
		return nil, err
	}
	return f, nil
}

// serverConfig is the listener's tls.Config: every handshake takes the files' current state.
func (f *tlsFiles) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			f.refresh()
			return f.current.Load(), nil
		},
	}
}

func (f *tlsFiles) refresh() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) < time.Second {
		return
	}
	f.checked = time.Now()
	if m := f.modTimes(); m == f.mtimes {
		return
	}
	if err := f.loadLocked(); err != nil {
		f.log.LogAttrs(context.Background(), slog.LevelError, "gRPC TLS files changed but do not load; keeping the previous ones",
			slog.String("error", err.Error()))
		return
	}
	f.log.LogAttrs(context.Background(), slog.LevelInfo, "gRPC TLS files reloaded")
}

func (f *tlsFiles) modTimes() [3]time.Time {
	var m [3]time.Time
	for i, p := range [...]string{f.cert, f.key, f.clientCA} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			m[i] = st.ModTime()
		}
	}
	return m
}

func (f *tlsFiles) load() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checked = time.Now()
	return f.loadLocked()
}

func (f *tlsFiles) loadLocked() error {
	m := f.modTimes()
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return fmt.Errorf("-grpc-tls-cert/-grpc-tls-key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{pair}}
	if f.clientCA != "" {
		pem, err := os.ReadFile(f.clientCA)
		if err != nil {
			return fmt.Errorf("-grpc-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-grpc-client-ca %s: no PEM certificate in it", f.clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
		if len(f.clientNames) > 0 {
			names := f.clientNames
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 || !certNamed(cs.PeerCertificates[0], names) {
					return errors.New("client certificate names none of -grpc-client-names")
				}
				return nil
			}
		}
	}
	f.current.Store(cfg)
	f.mtimes = m
	return nil
}

// certNamed reports whether a certificate carries one of names as a URI SAN (a SPIFFE id) or
// a DNS SAN.
func certNamed(c *x509.Certificate, names []string) bool {
	for _, u := range c.URIs {
		if slices.Contains(names, u.String()) {
			return true
		}
	}
	for _, d := range c.DNSNames {
		if slices.Contains(names, d) {
			return true
		}
	}
	return false
}

// limitListener accepts at most max connections at once; one over is closed at once (never
// queued: a queue of idle connections is what an attacker would fill).
type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused.Add(1)
			_ = c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
