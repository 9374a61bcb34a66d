package accesslog

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	aiv3 "github.com/envoyproxy/go-control-plane/envoy/data/ai/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// wireConfigs are the extraction settings the wire decoder is checked under.
func wireConfigs() map[string]*ExtractConfig {
	return map[string]*ExtractConfig{
		"default": {},
		"headers": {UsageHeaders: map[string]string{"x-usage-in": "usage.prompt_tokens", "x-usage-out": "usage.completion_tokens", "x-empty": ""}},
		"namespaces": {UsageNamespaces: []string{"purser.usage", "lua.usage", "envoy.filters.http.ext_authz"},
			AIGatewayNamespace: "-", TokenUsageNamespace: "custom.tokens"},
		"ai gateway as usage":  {UsageNamespaces: []string{AIGatewayNamespace}, TokenUsageNamespace: "-"},
		"dash usage namespace": {UsageNamespaces: []string{"-", "purser.usage"}},
		"ext_authz in every role": {UsageNamespaces: []string{ExtAuthzNamespace, "purser.usage", "purser.usage"},
			AIGatewayNamespace: ExtAuthzNamespace, UsageHeaders: map[string]string{"x-usage-in": "usage.prompt_tokens", "x-usage-out": "usage.prompt_tokens"}},
	}
}

// wireFixtures are the testdata entries plus variants carrying what the files do not: typed
// TokenUsage, usage headers and trailers, nested and odd Struct values, response flags.
func wireFixtures(t testing.TB) map[string]*alsdata.HTTPAccessLogEntry {
	t.Helper()
	out := map[string]*alsdata.HTTPAccessLogEntry{}
	files, err := os.ReadDir("testdata")
	require.NoError(t, err)
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("testdata", f.Name()))
		require.NoError(t, err)
		s := strings.NewReplacer("RESERVATION_ID", "8c1f0e62-3f0b-4d5e-9a61-1f2e3d4c5b6a", "REQUEST_ID", "req-1",
			"RESERVED_MICROS", "1500", "RESERVED_TOKENS", "0", "KEY_ID", "key_1").Replace(string(b))
		var e alsdata.HTTPAccessLogEntry
		require.NoError(t, protojson.Unmarshal([]byte(s), &e), f.Name())
		out[strings.TrimSuffix(f.Name(), ".json")] = &e
	}
	base := out["openai_chat_usage"]

	typed := proto.Clone(base).(*alsdata.HTTPAccessLogEntry)
	tu, err := anypb.New(&aiv3.TokenUsage{Model: "gpt-4o", InputTokens: wrapperspb.UInt64(12), OutputTokens: wrapperspb.UInt64(3),
		InputTokenDetails: &aiv3.InputTokenDetails{CachedTokens: wrapperspb.UInt64(2)}})
	require.NoError(t, err)
	failed, err := anypb.New(&aiv3.TokenUsage{ExtractionStatus: aiv3.TokenUsage_FAILED})
	require.NoError(t, err)
	typed.CommonProperties.Metadata.TypedFilterMetadata = map[string]*anypb.Any{TokenUsageNamespace: tu, "custom.tokens": failed}
	out["typed token usage"] = typed

	headers := proto.Clone(base).(*alsdata.HTTPAccessLogEntry)
	headers.Response.ResponseHeaders = map[string]string{"x-usage-in": " 41 ", "x-usage-out": "9", "content-type": "application/json", "x-empty": "1"}
	headers.Response.ResponseTrailers = map[string]string{"x-usage-out": "10", "grpc-status": "0"}
	out["usage headers"] = headers

	odd := proto.Clone(base).(*alsdata.HTTPAccessLogEntry)
	nested, err := structpb.NewStruct(map[string]any{"usage": map[string]any{"prompt_tokens": 7, "completion_tokens": 2,
		"details": []any{1, "x", nil, true}}, "flag": true, "nothing": nil, "usage_status": "error", "text": "hi"})
	require.NoError(t, err)
	odd.CommonProperties.Metadata.FilterMetadata["purser.usage"] = nested
	odd.CommonProperties.Metadata.FilterMetadata["lua.usage"] = &structpb.Struct{Fields: map[string]*structpb.Value{"model": structpb.NewStringValue("lua-model"), "usage.prompt_tokens": {}}}
	odd.CommonProperties.Metadata.FilterMetadata[ExtAuthzNamespace].Fields["subjects"] = structpb.NewNumberValue(3)
	odd.CommonProperties.ResponseFlags = &alsdata.ResponseFlags{UpstreamRequestTimeout: true, StreamIdleTimeout: true, NoRouteFound: true}
	odd.CommonProperties.AccessLogType = alsdata.AccessLogType_NotSet
	//lint:ignore SA1019 pre-1.27 Envoys send it, and the sink still reads it
	odd.CommonProperties.IntermediateLogEntry = true
	odd.CommonProperties.Duration = nil
	odd.Response.ResponseCode = &wrapperspb.UInt32Value{}
	out["odd values"] = odd

	// Every response flag on its own (interruption reports the first of several).
	fd := (&alsdata.ResponseFlags{}).ProtoReflect().Descriptor().Fields()
	for i := range fd.Len() {
		if f := fd.Get(i); f.Kind() == protoreflect.BoolKind {
			e := proto.Clone(base).(*alsdata.HTTPAccessLogEntry)
			e.CommonProperties.ResponseFlags.ProtoReflect().Set(f, protoreflect.ValueOfBool(true))
			out["flag "+string(f.Name())] = e
		}
	}

	odd.CommonProperties.Metadata.FilterMetadata["-"] = &structpb.Struct{Fields: map[string]*structpb.Value{
		"usage.completion_tokens": structpb.NewNumberValue(math.Inf(1)), "usage.prompt_tokens": structpb.NewNumberValue(math.NaN()),
		"usage.total_tokens": structpb.NewNumberValue(math.Inf(-1)), "model": structpb.NewBoolValue(false)}}

	many := proto.Clone(base).(*alsdata.HTTPAccessLogEntry)
	for i := range 300 { // past structFields' small array
		many.CommonProperties.Metadata.FilterMetadata["purser.usage"].Fields[fmt.Sprint("usage.k", i)] = structpb.NewNumberValue(float64(i))
		many.CommonProperties.Metadata.FilterMetadata[ExtAuthzNamespace].Fields[fmt.Sprint("x", i)] = structpb.NewStringValue("y")
	}
	out["many keys"] = many

	bare := &alsdata.HTTPAccessLogEntry{CommonProperties: &alsdata.AccessLogCommon{Metadata: &corev3.Metadata{
		FilterMetadata: map[string]*structpb.Struct{ExtAuthzNamespace: {}, "purser.usage": {}, AIGatewayNamespace: {}}}}}
	out["bare"] = bare
	out["empty"] = &alsdata.HTTPAccessLogEntry{}
	return out
}

// show prints an entry for comparison: Go syntax, so types count ("1" is not 1, "NaN" is not
// NaN); Tokens by value; fmt sorts map keys.
func show(e Entry) string {
	tok := "nil"
	if e.Tokens != nil {
		tok = fmt.Sprintf("%#v", *e.Tokens)
	}
	e.Tokens = nil
	return fmt.Sprintf("%#v tokens=%s", e, tok)
}

// reference is what Extract makes of wire bytes decoded by protobuf.
func reference(t testing.TB, wire []byte, cfg *ExtractConfig) (string, bool) {
	var e alsdata.HTTPAccessLogEntry
	if proto.Unmarshal(wire, &e) != nil {
		return "", false
	}
	return show(Extract(&e, cfg)), true
}

func decodeOne(t testing.TB, wire []byte, cfg *ExtractConfig) string {
	t.Helper()
	conf := cfg.withDefaults()
	got, err := decodeEntry(wire, &conf)
	require.NoError(t, err)
	return show(got)
}

func TestDecodeEntry_SameAsExtract(t *testing.T) {
	fixtures := wireFixtures(t)
	for cname, cfg := range wireConfigs() {
		for name, e := range fixtures {
			wire, err := proto.Marshal(e)
			require.NoError(t, err)
			want, ok := reference(t, wire, cfg)
			require.True(t, ok)
			require.Equal(t, want, decodeOne(t, wire, cfg), "%s under %s", name, cname)
		}
		// Concatenated encodings merge: repeated message fields merge, maps keep the last
		// entry for a key, scalars the last value.
		a, err := proto.Marshal(fixtures["odd values"])
		require.NoError(t, err)
		for name, e := range fixtures {
			b, err := proto.Marshal(e)
			require.NoError(t, err)
			for _, wire := range [][]byte{append(append([]byte{}, a...), b...), append(append([]byte{}, b...), a...), append(append([]byte{}, b...), b...)} {
				want, ok := reference(t, wire, cfg)
				require.True(t, ok)
				require.Equal(t, want, decodeOne(t, wire, cfg), "odd values merged with %s under %s", name, cname)
			}
		}
	}
}

// A client-sent path or user agent that is not UTF-8 makes protobuf reject the entry (and
// every other entry of its message); the wire decoder reads the entry anyway.
func TestDecodeMessage_InvalidUTF8ElsewhereLosesNothing(t *testing.T) {
	fixtures := wireFixtures(t)
	bad := proto.Clone(fixtures["openai_chat_usage"]).(*alsdata.HTTPAccessLogEntry)
	good := fixtures["anthropic_stream_usage"]
	msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
		LogEntry: []*alsdata.HTTPAccessLogEntry{good, bad}}}}
	wire, err := proto.MarshalOptions{}.Marshal(msg)
	require.NoError(t, err)
	// Put a byte that is not UTF-8 into the user agent, whose length stays the same.
	ua := []byte(bad.Request.UserAgent)
	i := strings.Index(string(wire), string(ua))
	require.Positive(t, i)
	wire[i] = 0xff
	require.Error(t, proto.Unmarshal(wire, &alsv3.StreamAccessLogsMessage{}))

	conf := (&ExtractConfig{}).withDefaults()
	m, err := decodeMessage(wire, &conf)
	require.NoError(t, err)
	require.Len(t, m.http, 2)
	bad.Request.UserAgent = ""
	require.Equal(t, show(Extract(good, &conf)), show(m.http[0]))
	require.Equal(t, show(Extract(bad, &conf)), show(m.http[1]))
	require.Equal(t, "8c1f0e62-3f0b-4d5e-9a61-1f2e3d4c5b6a", m.http[1].ReservationID)

	// The strings it keeps are made valid UTF-8: they go to Postgres, which rejects invalid
	// text (and with it a whole batch).
	kept := proto.Clone(fixtures["unverified_usage"]).(*alsdata.HTTPAccessLogEntry)
	kept.Request.RequestId = "req-#1"
	kept.CommonProperties.RouteName = "route-#"
	kept.CommonProperties.Metadata.FilterMetadata["purser.usage"].Fields["model#"] = structpb.NewStringValue("gpt-#")
	wire, err = proto.Marshal(kept)
	require.NoError(t, err)
	wire = []byte(strings.ReplaceAll(string(wire), "#", "\xff"))
	e, err := decodeEntry(wire, &conf)
	require.NoError(t, err)
	require.Equal(t, "req-\uFFFD1", e.RequestID)
	require.Equal(t, "route-\uFFFD", e.Route)
	require.Equal(t, "gpt-\uFFFD", e.Usage["model\uFFFD"])
}

func TestDecodeMessage_IdentifierAndOneof(t *testing.T) {
	fixtures := wireFixtures(t)
	id := &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy-1"}, LogName: "purser"}
	http := &alsv3.StreamAccessLogsMessage{Identifier: id, LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*alsdata.HTTPAccessLogEntry{fixtures["denied"], fixtures["periodic"]}}}}
	tcp := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*alsdata.TCPAccessLogEntry{{}, {}, {}}}}}
	hw, err := proto.Marshal(http)
	require.NoError(t, err)
	tw, err := proto.Marshal(tcp)
	require.NoError(t, err)
	conf := (&ExtractConfig{}).withDefaults()

	for _, c := range []struct {
		name       string
		wire       []byte
		tcp        bool
		http, tcpN int
	}{
		{"http", hw, false, 2, 0},
		{"tcp", tw, true, 0, 3},
		{"http then tcp: tcp wins", append(append([]byte{}, hw...), tw...), true, 0, 3},
		{"tcp then http: http wins", append(append([]byte{}, tw...), hw...), false, 2, 0},
		{"http twice: merged", append(append([]byte{}, hw...), hw...), false, 4, 0},
		{"tcp twice: merged", append(append([]byte{}, tw...), tw...), true, 0, 6},
	} {
		m, err := decodeMessage(c.wire, &conf)
		require.NoError(t, err, c.name)
		var ref alsv3.StreamAccessLogsMessage
		require.NoError(t, proto.Unmarshal(c.wire, &ref))
		require.Equal(t, c.tcp, m.tcp, c.name)
		require.Equal(t, c.tcp, ref.GetTcpLogs() != nil, c.name)
		require.Len(t, m.http, c.http, c.name)
		require.Len(t, ref.GetHttpLogs().GetLogEntry(), c.http, c.name)
		require.Equal(t, c.tcpN, m.tcpEntries, c.name)
		for i, e := range ref.GetHttpLogs().GetLogEntry() {
			require.Equal(t, show(Extract(e, &conf)), show(m.http[i]), c.name)
		}
		require.Equal(t, ref.GetIdentifier().GetNode().GetId(), m.identifier.GetNode().GetId(), c.name)
		require.Equal(t, ref.GetIdentifier().GetLogName(), m.identifier.GetLogName(), c.name)
	}

	// Malformed wire data is an error, not a partial message.
	for _, wire := range [][]byte{hw[:len(hw)-1], {0x12, 0x05, 0x0a}, protowire.AppendTag(nil, 0, protowire.VarintType)} {
		_, err := decodeMessage(wire, &conf)
		require.Error(t, err)
	}
}

// FuzzDecodeEntry: wherever protobuf decodes an entry, the wire decoder decodes it too, to
// the same Entry, under every configuration; on anything else it must not panic.
func FuzzDecodeEntry(f *testing.F) {
	fixtures := wireFixtures(f)
	for _, e := range fixtures {
		wire, err := proto.Marshal(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	cfgs := wireConfigs()
	f.Fuzz(func(t *testing.T, wire []byte) {
		for cname, cfg := range cfgs {
			want, ok := reference(t, wire, cfg)
			conf := cfg.withDefaults()
			got, err := decodeEntry(wire, &conf)
			if !ok {
				continue
			}
			if err != nil {
				t.Fatalf("%s: protobuf decodes the entry, the wire decoder fails: %v", cname, err)
			}
			if show(got) != want {
				t.Fatalf("%s:\n got %s\nwant %s", cname, show(got), want)
			}
		}
	})
}

// BenchmarkDecodeMessage: one message of 16 entries (what Envoy's 16 KiB buffer flushes), as
// protobuf and Extract read it and as the wire decoder does.
func BenchmarkDecodeMessage(b *testing.B) {
	e := wireFixtures(b)["openai_chat_usage"]
	es := make([]*alsdata.HTTPAccessLogEntry, 16)
	for i := range es {
		es[i] = e
	}
	wire, err := proto.Marshal(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}}})
	require.NoError(b, err)
	conf := (&ExtractConfig{}).withDefaults()
	b.Run("protobuf+Extract", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m alsv3.StreamAccessLogsMessage
			require.NoError(b, proto.Unmarshal(wire, &m))
			for _, le := range m.GetHttpLogs().GetLogEntry() {
				_ = Extract(le, &conf)
			}
		}
	})
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m, err := decodeMessage(wire, &conf)
			require.NoError(b, err)
			require.Len(b, m.http, 16)
		}
	})
}

// interruptions names each flag by its ResponseFlags field, a bool.
func TestInterruptions_NameTheirFields(t *testing.T) {
	fds := (&alsdata.ResponseFlags{}).ProtoReflect().Descriptor().Fields()
	for _, in := range interruptions {
		fd := fds.ByNumber(in.field)
		require.NotNil(t, fd, in.name)
		require.Equal(t, protoreflect.BoolKind, fd.Kind(), in.name)
		require.True(t, strings.HasPrefix(string(fd.Name()), in.name), "field %d is %s, named %s", in.field, fd.Name(), in.name)
	}
}
