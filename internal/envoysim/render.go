package envoysim

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	credv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	genericv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
)

// RenderOptions adapt a shipped bootstrap to a test's ports, for running a real Envoy.
type RenderOptions struct {
	ListenerPort int
	AdminPort    int
	// GRPC: the gRPC cluster (ext_authz and access log, "purser") -> host:port addresses.
	GRPC map[string][]string
	// Upstream is host:port of the plain-HTTP upstream every other cluster points at.
	Upstream string
	// SecretsDir replaces the directory of the credential injectors' SDS files.
	SecretsDir string
}

// RenderForEnvoy rewrites a bootstrap (envoy-demo.yaml) for a real Envoy on this machine:
// loopback listener and admin on the given ports, clusters pointed at the test's processes
// (static, plain text), SDS files under SecretsDir. Everything else is left as shipped. The
// result is JSON, which Envoy reads from a .json file.
func RenderForEnvoy(src []byte, o RenderOptions) ([]byte, error) {
	bs, err := DecodeBootstrap(src)
	if err != nil {
		return nil, err
	}
	sa := func(hostport string) (*corev3.Address, error) {
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return nil, err
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, err
		}
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
		}}}, nil
	}
	adminAddr, _ := sa(net.JoinHostPort("127.0.0.1", strconv.Itoa(o.AdminPort)))
	bs.GetAdmin().Address = adminAddr
	ls := bs.GetStaticResources().GetListeners()
	if len(ls) != 1 {
		return nil, fmt.Errorf("envoysim: want one listener, got %d", len(ls))
	}
	ls[0].Address, _ = sa(net.JoinHostPort("127.0.0.1", strconv.Itoa(o.ListenerPort)))
	for _, cl := range bs.GetStaticResources().GetClusters() {
		addrs, ok := o.GRPC[cl.GetName()]
		if !ok {
			addrs = []string{o.Upstream}
			cl.TransportSocket = nil // plain-text upstream
		}
		var eps []*endpointv3.LbEndpoint
		for _, a := range addrs {
			addr, err := sa(a)
			if err != nil {
				return nil, fmt.Errorf("envoysim: cluster %s: %w", cl.GetName(), err)
			}
			eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}}})
		}
		cl.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		cl.LoadAssignment = &endpointv3.ClusterLoadAssignment{ClusterName: cl.GetName(), Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
	}
	// SDS paths of the credential injectors.
	f := ls[0].GetFilterChains()[0].GetFilters()[0]
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		return nil, err
	}
	for _, hf := range hcm.GetHttpFilters() {
		if !hf.GetTypedConfig().MessageIs(&credv3.CredentialInjector{}) {
			continue
		}
		var ci credv3.CredentialInjector
		if err := hf.GetTypedConfig().UnmarshalTo(&ci); err != nil {
			return nil, err
		}
		var g genericv3.Generic
		if err := ci.GetCredential().GetTypedConfig().UnmarshalTo(&g); err != nil {
			return nil, err
		}
		pcs := g.GetCredential().GetSdsConfig().GetPathConfigSource()
		if pcs == nil {
			continue
		}
		pcs.Path = filepath.Join(o.SecretsDir, filepath.Base(pcs.GetPath()))
		if pcs.GetWatchedDirectory() != nil {
			pcs.WatchedDirectory.Path = o.SecretsDir
		}
		if ci.Credential.TypedConfig, err = anypb.New(&g); err != nil {
			return nil, err
		}
		a, err := anypb.New(&ci)
		if err != nil {
			return nil, err
		}
		hf.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}
	}
	a, err := anypb.New(&hcm)
	if err != nil {
		return nil, err
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	return protojson.MarshalOptions{Indent: "  "}.Marshal(bs)
}
