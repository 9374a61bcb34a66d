package main

// purser doctor: read the recent ledger and the running configuration and tell an operator
// what is misconfigured, above all what makes purser charge whole holds instead of real
// prices (answers whose usage never arrives: compression, missing usage filters, streams
// without usage, a lost access log) and clock skew.

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	jsonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	ext_authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	j2mv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	ssev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/sse_to_metadata/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"sigs.k8s.io/yaml"

	// Types the shipped bootstraps name in typed_config; a bootstrap naming another type is
	// still read (unknown types are skipped), only not inspected.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/compression/gzip/decompressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/compressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/credential_injector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/decompressor/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/http/injected_credentials/generic/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/purser-dev/purser/accesslog"
	"github.com/purser-dev/purser/alerts"
	"github.com/purser-dev/purser/budget"
)

func doctorCommand() command {
	return leaf("read the recent ledger and the running config; report what charges whole holds (exit 1 on a problem)", runDoctor)
}

// finding is one line of the report.
type finding struct {
	problem bool
	text    string
}

type doctorReport []finding

func (r *doctorReport) ok(format string, a ...any) {
	*r = append(*r, finding{text: fmt.Sprintf(format, a...)})
}

func (r *doctorReport) problem(format string, a ...any) {
	*r = append(*r, finding{problem: true, text: fmt.Sprintf(format, a...)})
}

func runDoctor(ctx context.Context, e env, args []string) error {
	f := newFlags("doctor", e)
	dsn := databaseFlag(f)
	since := f.Duration("since", "", time.Hour, "judge the reservations resolved in this span")
	maxMissing := f.Int("max-missing-percent", "", 5, "a route whose share of answers charged without usage is above this is a problem")
	cfgPath := f.String("config", "PURSER_CONFIG", "", "purser's configuration file (the usage namespaces and policies it runs with)")
	envoyFiles := f.String("envoy", "", "", "Envoy bootstrap(s) the data plane runs, comma separated (YAML or JSON)")
	maxSkew := f.Duration("max-clock-skew", "", 2*time.Second, "largest tolerated difference between this clock and the database's")
	if err := f.Parse(args); err != nil {
		return err
	}
	var rep doctorReport
	fc, err := loadFileConfig(*cfgPath)
	if err != nil {
		return err
	}
	namespaces := fc.Usage.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{accesslog.UsageNamespace}
	}

	svc, closeLedger, err := openLedger(ctx, *dsn)
	if err != nil {
		return err
	}
	defer closeLedger()
	streams := doctorLedger(ctx, svc, &rep, time.Now().Add(-*since), *maxMissing)
	if err := doctorClock(ctx, svc, &rep, *maxSkew); err != nil {
		return err
	}
	if streams > 0 && fc.Policies.StreamNoUsage != "deny" {
		rep.ok("note: %d event streams came back without usage and were charged their hold; policies.stream_without_usage: deny refuses OpenAI-style streams that do not ask for stream_options.include_usage", streams)
	}
	for _, path := range strings.Split(*envoyFiles, ",") {
		if path = strings.TrimSpace(path); path != "" {
			if err := doctorEnvoy(path, namespaces, &rep); err != nil {
				return err
			}
		}
	}

	problems := 0
	for _, x := range rep {
		prefix := "ok      "
		if x.problem {
			prefix = "PROBLEM "
			problems++
		}
		fmt.Fprintln(e.stdout, prefix+x.text)
	}
	if problems > 0 {
		return exitError{code: 1, msg: fmt.Sprintf("%d problem(s) found", problems)}
	}
	fmt.Fprintln(e.stdout, "no problems found")
	return nil
}

// doctorLedger judges the reservations resolved since from and returns how many streams came
// back without usage.
func doctorLedger(ctx context.Context, svc *budget.Service, rep *doctorReport, from time.Time, maxMissing int) int64 {
	rows, err := svc.UsageHealth(ctx, from)
	if err != nil {
		rep.problem("ledger: cannot read the recent reservations: %v", err)
		return 0
	}
	resolved, _ := budget.UsageShortfall(rows)
	if resolved == 0 {
		rep.ok("ledger: no reservation resolved since %s: nothing to judge yet", from.UTC().Format(time.RFC3339))
		return 0
	}
	var streams, bad int64
	for _, r := range rows {
		streams += r.Streams
		missing := r.WithoutUsage + r.Expired
		if missing == 0 || missing*100 <= r.Resolved*int64(maxMissing) {
			continue
		}
		bad += missing
		rep.problem("route %q (%s %s): %d of %d requests since %s were charged their whole hold (%d without usage: %d compressed, %d streams; %d never logged). %s",
			r.Route, r.Provider, r.Model, missing, r.Resolved, from.UTC().Format(time.RFC3339),
			r.WithoutUsage, r.Compressed, r.Streams, r.Expired, alerts.UsageHint(r))
	}
	if bad == 0 {
		rep.ok("ledger: %d requests resolved since %s, each route within %d%% answers without usage", resolved, from.UTC().Format(time.RFC3339), maxMissing)
	}
	return streams
}

// doctorClock compares this machine's clock with the database's: windows and expiry follow
// one, reservation times the other, and Envoy's access-log times a third.
func doctorClock(ctx context.Context, svc *budget.Service, rep *doctorReport, maxSkew time.Duration) error {
	before := time.Now()
	dbNow, err := svc.DatabaseClock(ctx)
	if err != nil {
		return err
	}
	after := time.Now()
	local := before.Add(after.Sub(before) / 2)
	skew := dbNow.Sub(local)
	if skew.Abs() > maxSkew+after.Sub(before)/2 {
		rep.problem("clock: the database's clock is %s off this machine's (max %s): run NTP on both; expiry, windows and the access log's x-request-id join compare them", skew.Round(time.Millisecond), maxSkew)
		return nil
	}
	rep.ok("clock: the database's clock is within %s of this machine's", maxSkew)
	return nil
}

// doctorEnvoy reads an Envoy bootstrap and reports what in it loses usage.
func doctorEnvoy(path string, namespaces []string, rep *doctorReport) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("envoy config: %w", err)
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return fmt.Errorf("envoy config %s: %w", path, err)
	}
	res, err := newLenientResolver()
	if err != nil {
		return err
	}
	var bs bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: res}).Unmarshal(js, &bs); err != nil {
		return fmt.Errorf("envoy config %s: %w", path, err)
	}
	found := false
	for _, l := range bs.GetStaticResources().GetListeners() {
		for _, fch := range l.GetFilterChains() {
			for _, nf := range fch.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if nf.GetTypedConfig().UnmarshalTo(&hcm) != nil {
					continue
				}
				found = true
				doctorHCM(path+" listener "+l.GetName(), &hcm, namespaces, rep)
			}
		}
	}
	if !found {
		rep.problem("%s: no HTTP connection manager in static listeners: purser cannot see requests through it", path)
	}
	return nil
}

func doctorHCM(where string, hcm *hcmv3.HttpConnectionManager, namespaces []string, rep *doctorReport) {
	var (
		authz                       *ext_authzv3.ExtAuthz
		jsonRules, sseRules, hasLua bool
		written                     = map[string]bool{}
		order                       []string
	)
	for _, hf := range hcm.GetHttpFilters() {
		a := hf.GetTypedConfig()
		order = append(order, hf.GetName())
		switch {
		case a.MessageIs(&ext_authzv3.ExtAuthz{}):
			authz = new(ext_authzv3.ExtAuthz)
			_ = a.UnmarshalTo(authz)
		case a.MessageIs(&j2mv3.JsonToMetadata{}):
			var j j2mv3.JsonToMetadata
			_ = a.UnmarshalTo(&j)
			for _, r := range j.GetResponseRules().GetRules() {
				written[nsOr(r.GetOnPresent().GetMetadataNamespace(), "envoy.filters.http.json_to_metadata")] = true
				jsonRules = true
			}
		case a.MessageIs(&ssev3.SseToMetadata{}):
			var s ssev3.SseToMetadata
			_ = a.UnmarshalTo(&s)
			var p jsonv3.JsonContentParser
			if s.GetResponseRules().GetContentParser().GetTypedConfig().UnmarshalTo(&p) == nil {
				for _, r := range p.GetRules() {
					written[nsOr(r.GetRule().GetOnPresent().GetMetadataNamespace(), "envoy.filters.http.sse_to_metadata")] = true
					sseRules = true
				}
			}
		case a.MessageIs(&luav3.Lua{}):
			var l luav3.Lua
			_ = a.UnmarshalTo(&l)
			if src := l.GetDefaultSourceCode().GetInlineString(); strings.Contains(src, "dynamicMetadata") {
				hasLua = true
				for _, ns := range namespaces {
					if strings.Contains(src, `"`+ns+`"`) {
						written[ns] = true
					}
				}
				if !hf.GetDisabled() { // a route-scoped Lua scan does not cover every route
					jsonRules, sseRules = true, true
				}
			}
		case strings.Contains(a.GetTypeUrl(), "filters.http.compressor.v3.Compressor"):
			order[len(order)-1] = "compressor"
		}
	}
	switch {
	case authz == nil:
		rep.problem("%s: no ext_authz filter: no request is checked or reserved", where)
	case authz.GetFailureModeAllow():
		rep.problem("%s: ext_authz failure_mode_allow is true: when purser cannot answer, requests go through unbudgeted", where)
	default:
		rep.ok("%s: ext_authz fails closed", where)
	}
	if !jsonRules {
		rep.problem("%s: no filter reads usage from JSON answers (json_to_metadata response_rules, or the Lua scan): every non-streaming request is charged its whole hold", where)
	}
	if !sseRules {
		rep.problem("%s: no filter reads usage from event streams (sse_to_metadata, or the Lua scan): every streamed request is charged its whole hold", where)
	}
	if jsonRules && sseRules {
		rep.ok("%s: usage filters for JSON answers and event streams%s", where, map[bool]string{true: " (and the Lua scan)", false: ""}[hasLua])
	}
	for ns := range written {
		if !slices.Contains(namespaces, ns) {
			rep.problem("%s: usage is written to metadata namespace %q, which purser does not read (usage.namespaces: %v)", where, ns, namespaces)
		}
	}
	// On the way back the filters run last to first: a compressor listed after a usage filter
	// compresses the answer before that filter reads it.
	if i := slices.Index(order, "compressor"); i >= 0 {
		for _, usageFilter := range order[:i] {
			if strings.Contains(usageFilter, "json_to_metadata") || strings.Contains(usageFilter, "sse_to_metadata") || strings.Contains(usageFilter, "lua") {
				rep.problem("%s: a compressor runs before %s on the response: it reads compressed bytes; list the compressor before the usage filters", where, usageFilter)
			}
		}
	}
	var als *grpcv3.HttpGrpcAccessLogConfig
	for _, al := range hcm.GetAccessLog() {
		var g grpcv3.HttpGrpcAccessLogConfig
		if al.GetTypedConfig().UnmarshalTo(&g) == nil {
			als = &g
		}
	}
	if als == nil {
		rep.problem("%s: no gRPC access log (envoy.access_loggers.http_grpc): no reservation is ever settled; each expires and is charged in full", where)
		return
	}
	logged := als.GetAdditionalResponseHeadersToLog()
	for _, h := range []string{"content-type", "content-encoding"} {
		if !slices.ContainsFunc(logged, func(x string) bool { return strings.EqualFold(x, h) }) {
			rep.ok("note: %s: the access log does not carry the response's %s: purser cannot tell why an answer had no usage (add it to additional_response_headers_to_log)", where, h)
		}
	}
}

func nsOr(ns, def string) string {
	if ns == "" {
		return def
	}
	return ns
}

// lenientResolver resolves the types linked into purser and stands a Struct in for any other
// Any, so that a bootstrap with extensions purser does not know is still read.
type lenientResolver struct{ unknown protoreflect.MessageType }

func (lenientResolver) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(field)
}

func (lenientResolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}

func (r lenientResolver) FindMessageByName(message protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(message); err == nil {
		return mt, nil
	}
	return r.unknown, nil
}

// newLenientResolver makes the stand-in type: a message without fields, into which (with
// DiscardUnknown) any typed_config whose type purser does not link decodes, to be skipped.
func newLenientResolver() (lenientResolver, error) {
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("purser/doctor/unknown.proto"), Package: proto.String("purser.doctor"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Unknown")}},
	}, nil)
	if err != nil {
		return lenientResolver{}, fmt.Errorf("doctor: %w", err)
	}
	return lenientResolver{unknown: dynamicpb.NewMessageType(fd.Messages().Get(0))}, nil
}

func (r lenientResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	name := url
	if i := strings.LastIndexByte(url, '/'); i >= 0 {
		name = url[i+1:]
	}
	return r.FindMessageByName(protoreflect.FullName(name))
}
