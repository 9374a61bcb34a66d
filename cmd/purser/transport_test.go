package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/purser-dev/purser/extauthz"
)

// A gRPC listener reachable from other hosts must authenticate its callers, or say
// explicitly that it does not.
func TestParseServeConfig_RefusesUnauthenticatedNonLoopback(t *testing.T) {
	t.Parallel()
	parse := func(args ...string) error {
		_, err := parseServeConfig(testEnv(nil), args)
		return err
	}
	for _, addr := range []string{"0.0.0.0:9000", ":9000", "10.0.0.7:9000", "[::]:9000", "purser.internal:9000"} {
		err := parse("-grpc-addr", addr)
		require.ErrorContains(t, err, "no caller has to authenticate", "%s refused", addr)
		require.ErrorContains(t, err, "-insecure-grpc")
		require.NoError(t, parse("-grpc-addr", addr, "-shared-secret", "0123456789abcdef"), "%s with a shared secret", addr)
		require.NoError(t, parse("-grpc-addr", addr, "-grpc-tls-cert", "c.pem", "-grpc-tls-key", "k.pem", "-grpc-client-ca", "ca.pem"), "%s with mTLS", addr)
		require.NoError(t, parse("-grpc-addr", addr, "-grpc-mesh-authn"), "%s behind a mesh", addr)
		require.NoError(t, parse("-grpc-addr", addr, "-insecure-grpc"), "%s, insecure by choice", addr)
	}
	for _, addr := range []string{"127.0.0.1:9000", "localhost:9000", "[::1]:9000", "127.0.0.53:9000"} {
		require.NoError(t, parse("-grpc-addr", addr), "%s is loopback", addr)
	}
	require.ErrorContains(t, parse("-grpc-tls-cert", "c.pem"), "go together")
	require.ErrorContains(t, parse("-grpc-client-ca", "ca.pem"), "needs -grpc-tls-cert")
	require.ErrorContains(t, parse("-grpc-client-names", "spiffe://x/y"), "needs -grpc-client-ca")
	require.ErrorContains(t, parse("-insecure-grpc", "-grpc-mesh-authn"), "contradict")
	require.ErrorContains(t, parse("-template-max-budgets", "0"), "-template-max-budgets 0")
	require.ErrorContains(t, parse("-idle-budget-age", "1m"), "-idle-budget-age 1m0s")
	_, err := parseServeConfig(testEnv(map[string]string{"PURSER_GRPC_ADDR": "0.0.0.0:9000", "PURSER_INSECURE_GRPC": "true"}), nil)
	require.NoError(t, err, "the environment says it as well")
}

// pki is a throw-away CA with server and client certificates written as PEM files.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	p.ca, p.caKey = p.issue(t, nil, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true})
	return p
}

func (p *pki) issue(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	p.serial++
	tmpl.SerialNumber = big.NewInt(p.serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return c, key
}

// write stores a certificate and key as PEM files and returns their paths.
func (p *pki) write(t *testing.T, name string, c *x509.Certificate, key *ecdsa.PrivateKey) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	require.NoError(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o600))
	if key != nil {
		der, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600))
	}
	return certPath, keyPath
}

func (p *pki) server(t *testing.T, name string) (string, string) {
	c, k := p.issue(t, p.ca, p.caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "purser"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return p.write(t, name, c, k)
}

func (p *pki) client(t *testing.T, spiffe string) tls.Certificate {
	u, err := url.Parse(spiffe)
	require.NoError(t, err)
	c, k := p.issue(t, p.ca, p.caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "envoy"}, URIs: []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	return pool
}

func checkRequest(t *testing.T, name string) *authv3.CheckRequest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "extauthz", "request", "testdata", name+".json"))
	require.NoError(t, err)
	var req authv3.CheckRequest
	require.NoError(t, protojson.Unmarshal(b, &req))
	return &req
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) authv3.AuthorizationClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

func reason(resp *authv3.CheckResponse) string {
	for _, h := range resp.GetDeniedResponse().GetHeaders() {
		if h.GetHeader().GetKey() == extauthz.HeaderReason {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

// mTLS: only an Envoy with a client certificate from the configured CA, naming an allowed
// identity, reaches Check; its identity claims are believed. The server certificate is
// reloaded when its file changes.
func TestServe_MutualTLS(t *testing.T) {
	t.Parallel()
	ca := newPKI(t)
	certPath, keyPath := ca.server(t, "server")
	caPath, _ := ca.write(t, "ca", ca.ca, nil)
	const envoyID = "spiffe://cluster.local/ns/gateway/sa/envoy"
	grpcAddr, _, _ := startServe(t, "-check-timeout", "10s", "-grpc-tls-cert", certPath, "-grpc-tls-key", keyPath, "-grpc-client-ca", caPath,
		"-grpc-client-names", envoyID)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := checkRequest(t, "mtls_principal") // a workload identity, no key

	// Plaintext, and TLS without a client certificate: no Check.
	plain, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer plain.Close()
	_, err = authv3.NewAuthorizationClient(plain).Check(ctx, req)
	require.Equal(t, codes.Unavailable, status.Code(err), "plaintext: %v", err)
	_, err = dialTLS(t, grpcAddr, &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1"}).Check(ctx, req)
	require.Equal(t, codes.Unavailable, status.Code(err), "no client certificate: %v", err)
	other := newPKI(t)
	_, err = dialTLS(t, grpcAddr, &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{other.client(t, envoyID)}}).Check(ctx, req)
	require.Equal(t, codes.Unavailable, status.Code(err), "a certificate from another CA: %v", err)
	_, err = dialTLS(t, grpcAddr, &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{ca.client(t, "spiffe://cluster.local/ns/app/sa/web")}}).Check(ctx, req)
	require.Equal(t, codes.Unavailable, status.Code(err), "the CA's certificate for another workload: %v", err)

	var seen atomic.Pointer[x509.Certificate]
	envoy := &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{ca.client(t, envoyID)},
		VerifyConnection: func(cs tls.ConnectionState) error { seen.Store(cs.PeerCertificates[0]); return nil }}
	resp, err := dialTLS(t, grpcAddr, envoy).Check(ctx, req)
	require.NoError(t, err)
	require.Equal(t, extauthz.DecisionReserved, resp.GetDynamicMetadata().GetFields()[extauthz.MetaDecision].GetStringValue(),
		"the workload identity is believed from an authenticated Envoy: %s", reason(resp))
	first := seen.Load().SerialNumber

	// A new server certificate on disk is served to the next connection.
	c2, k2 := ca.server(t, "server2")
	b, err := os.ReadFile(c2)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(certPath, b, 0o600))
	b, err = os.ReadFile(k2)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyPath, b, 0o600))
	later := time.Now().Add(2 * time.Second)
	require.NoError(t, os.Chtimes(certPath, later, later))
	require.NoError(t, os.Chtimes(keyPath, later, later))
	require.Eventually(t, func() bool {
		_, err := dialTLS(t, grpcAddr, envoy).Check(ctx, req)
		return err == nil && seen.Load().SerialNumber.Cmp(first) != 0
	}, 15*time.Second, 200*time.Millisecond, "the reloaded certificate is served")
}

// Without a shared secret or mTLS (loopback), identity claims are not believed; with the
// secret they are. Access-log streams without the secret are refused too.
func TestServe_ClaimsNeedAuthentication(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	req := checkRequest(t, "mtls_principal")

	open, _, _ := startServe(t, "-check-timeout", "10s")
	conn, err := grpc.NewClient(open, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, req)
	require.NoError(t, err)
	require.Equal(t, "untrusted_identity", reason(resp), "a forged source.principal from an unauthenticated caller")

	const secret = "s3cr3t-shared-with-envoy"
	guarded, _, _ := startServe(t, "-check-timeout", "10s", "-shared-secret", secret)
	conn2, err := grpc.NewClient(guarded, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn2.Close()
	az := authv3.NewAuthorizationClient(conn2)
	resp, err = az.Check(metadata.AppendToOutgoingContext(ctx, sharedSecretHeader, secret), req)
	require.NoError(t, err)
	require.Equal(t, extauthz.DecisionReserved, resp.GetDynamicMetadata().GetFields()[extauthz.MetaDecision].GetStringValue(), reason(resp))
}

// Connections over -grpc-max-connections are closed on accept.
func TestServe_ConnectionLimit(t *testing.T) {
	t.Parallel()
	addr, _, _ := startServe(t, "-grpc-max-connections", "2")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err, "the third connection is closed by the server")
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "closed, not left hanging: %v", err)
}
