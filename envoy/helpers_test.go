package envoy_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	jsonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	ext_authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	json_to_metadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	sse_to_metadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	// Every extension named by an "@type" in the shipped configs must be linked in, or protojson
	// cannot resolve the Any and the test fails (which is the point: an unknown @type is an error).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// strictProto decodes JSON into m with protojson, rejecting unknown fields, then runs the PGV
// validators on m and on every message packed in an Any below it.
func strictProto(js []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, m); err != nil {
		return fmt.Errorf("protojson: %w", err)
	}
	return validateDeep(m)
}

// decodeBootstrap is the whole validation of an Envoy bootstrap file's content. sigs.k8s.io/yaml
// keeps key names as written, which is what protojson needs (it accepts both the proto and the
// JSON field names).
func decodeBootstrap(b []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var bs bootstrapv3.Bootstrap
	if err := strictProto(js, &bs); err != nil {
		return nil, err
	}
	return &bs, nil
}

type validator interface{ ValidateAll() error }

// validateDeep runs ValidateAll on m, then on every message packed in an Any anywhere below it:
// PGV's generated validators do not look inside Any fields, so typed_config contents would
// otherwise never be checked.
func validateDeep(m proto.Message) error {
	var errs []error
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err))
		}
	}
	errs = append(errs, walkAnys(m.ProtoReflect())...)
	return errors.Join(errs...)
}

func walkAnys(m protoreflect.Message) []error {
	var errs []error
	visit := func(child protoreflect.Message) {
		if a, ok := child.Interface().(*anypb.Any); ok {
			if a.GetTypeUrl() == "" {
				return // an empty Any: route FilterConfig{config: {}} means "enable the filter here"
			}
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err))
				return
			}
			if err := validateDeep(inner); err != nil {
				errs = append(errs, err)
			}
			return
		}
		errs = append(errs, walkAnys(child)...)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Kind() == protoreflect.MessageKind {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					visit(l.Get(i).Message())
				}
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message())
					return true
				})
			}
		case fd.Kind() == protoreflect.MessageKind:
			visit(v.Message())
		}
		return true
	})
	return errs
}

// envoyFiles lists every Envoy bootstrap shipped in this directory.
func envoyFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("envoy*.yaml")
	require.NoError(t, err)
	require.Contains(t, files, "envoy.yaml")
	require.Contains(t, files, "envoy-lua.yaml")
	require.Contains(t, files, "envoy-demo.yaml")
	return files
}

func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	bs, err := decodeBootstrap(b)
	require.NoError(t, err, "%s does not validate", path)
	return bs
}

// cfg is a decoded bootstrap with the pieces the rules talk about unpacked.
type cfg struct {
	path    string
	bs      *bootstrapv3.Bootstrap
	hcm     *hcmv3.HttpConnectionManager
	authz   *ext_authzv3.ExtAuthz
	als     *grpcv3.HttpGrpcAccessLogConfig
	j2m     *json_to_metadatav3.JsonToMetadata // nil in the Lua variant
	sse     *sse_to_metadatav3.SseToMetadata   // nil in the Lua variant
	sseJSON *jsonv3.JsonContentParser
	lua     *luav3.Lua // the Lua usage scan: the whole story in envoy-lua.yaml, route-scoped in envoy.yaml
	// luaOnly: the Lua filter runs on every route (envoy-lua.yaml); in envoy.yaml it is off by
	// default and switched on by the routes that need it.
	luaOnly bool
}

func loadCfg(t *testing.T, path string) *cfg {
	t.Helper()
	c := &cfg{path: path, bs: loadBootstrap(t, path)}
	ls := c.bs.GetStaticResources().GetListeners()
	require.Len(t, ls, 1, "%s: one listener expected", path)
	chains := ls[0].GetFilterChains()
	require.Len(t, chains, 1)
	require.Len(t, chains[0].GetFilters(), 1)
	c.hcm = new(hcmv3.HttpConnectionManager)
	require.NoError(t, chains[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(c.hcm))

	for _, f := range c.hcm.GetHttpFilters() {
		var dst proto.Message
		switch f.GetName() {
		case "envoy.filters.http.ext_authz":
			c.authz = new(ext_authzv3.ExtAuthz)
			dst = c.authz
		case "envoy.filters.http.json_to_metadata":
			c.j2m = new(json_to_metadatav3.JsonToMetadata)
			dst = c.j2m
		case "envoy.filters.http.sse_to_metadata":
			c.sse = new(sse_to_metadatav3.SseToMetadata)
			dst = c.sse
		case "envoy.filters.http.lua":
			c.lua = new(luav3.Lua)
			c.luaOnly = !f.GetDisabled()
			dst = c.lua
		default:
			continue
		}
		require.NoError(t, f.GetTypedConfig().UnmarshalTo(dst), "%s: filter %s", path, f.GetName())
	}
	require.NotNil(t, c.authz, "%s: no ext_authz filter", path)
	if c.sse != nil {
		c.sseJSON = new(jsonv3.JsonContentParser)
		require.NoError(t, c.sse.GetResponseRules().GetContentParser().GetTypedConfig().UnmarshalTo(c.sseJSON))
	}

	for _, l := range c.hcm.GetAccessLog() {
		if l.GetName() == "envoy.access_loggers.http_grpc" {
			c.als = new(grpcv3.HttpGrpcAccessLogConfig)
			require.NoError(t, l.GetTypedConfig().UnmarshalTo(c.als))
		}
	}
	require.NotNil(t, c.als, "%s: no http_grpc access logger", path)
	return c
}

func (c *cfg) cluster(t *testing.T, name string) *clusterv3.Cluster {
	t.Helper()
	for _, cl := range c.bs.GetStaticResources().GetClusters() {
		if cl.GetName() == name {
			return cl
		}
	}
	require.Failf(t, "missing cluster", "%s: cluster %q", c.path, name)
	return nil
}

func (c *cfg) routes() []*routev3.Route {
	var out []*routev3.Route
	for _, vh := range c.hcm.GetRouteConfig().GetVirtualHosts() {
		out = append(out, vh.GetRoutes()...)
	}
	return out
}

func (c *cfg) filter(name string) *hcmv3.HttpFilter {
	for _, f := range c.hcm.GetHttpFilters() {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

// manifest is the envelope of a Kubernetes-style object whose spec is decoded as S.
type manifest[S any] struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            S                 `json:"spec"`
}

// appendNew appends a new zero *T to *list and returns it: the decoders collect each kind of
// document in its own slice.
func appendNew[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

// credentialHeaders carry secrets (purser keys, provider keys, sessions): no configuration may
// ship them to the access log.
var credentialHeaders = []string{"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie"}

// requireNoCredentialHeaders fails when a header list names a credential header.
func requireNoCredentialHeaders(t *testing.T, lists ...[]string) {
	t.Helper()
	for _, l := range lists {
		for _, h := range l {
			require.NotContains(t, credentialHeaders, strings.ToLower(h), "credential header %q must not be shipped to the access log", h)
		}
	}
}

// glob lists the files matching pattern; at least one must.
func glob(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(pattern)
	require.NoError(t, err)
	require.NotEmpty(t, files, pattern)
	return files
}

// decodeFiles runs decode on every YAML document of every file and requires each to decode.
func decodeFiles(t *testing.T, files []string, decode func(doc []byte) error) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, d := range splitDocs(b) {
			require.NoError(t, decode(d), "%s document %d", f, i)
		}
	}
}

// eachDoc makes a decoder of one document a decoder of a multi-document file: the errors of
// its documents, joined.
func eachDoc(decode func(doc []byte) error) func(file []byte) error {
	return func(b []byte) error {
		var errs []error
		for _, d := range splitDocs(b) {
			errs = append(errs, decode(d))
		}
		return errors.Join(errs...)
	}
}

// damage replaces the first occurrence of old in file with new and returns what decode says
// about the result. The file as shipped must decode and old must occur outside a comment, so
// that a case whose edit changes nothing fails instead of passing for the wrong reason.
func damage(t *testing.T, file, old, new string, decode func(file []byte) error) error {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, decode(b), "%s as shipped must decode", file)
	s := string(b)
	i := strings.Index(s, old)
	require.GreaterOrEqual(t, i, 0, "%s: fixture text %q not found; update the case", file, old)
	require.NotContains(t, s[strings.LastIndex(s[:i], "\n")+1:i], "#",
		"%s: the first %q is inside a comment; make the case more specific", file, old)
	return decode([]byte(s[:i] + new + s[i+len(old):]))
}
