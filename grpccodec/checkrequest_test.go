package grpccodec_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/grpccodec"
)

// fixtures are the Envoy-shaped CheckRequests of extauthz/request/testdata, encoded.
func fixtures(t testing.TB) map[string][]byte {
	t.Helper()
	dir := filepath.Join("..", "extauthz", "request", "testdata")
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, names)
	out := map[string][]byte{}
	for _, name := range names {
		j, err := os.ReadFile(name)
		require.NoError(t, err)
		var req authv3.CheckRequest
		require.NoError(t, protojson.Unmarshal(j, &req), name)
		b, err := proto.Marshal(&req)
		require.NoError(t, err)
		out[strings.TrimSuffix(filepath.Base(name), ".json")] = b
	}
	return out
}

// oddities are encodings a generated marshaller never writes but the wire allows: fields
// split and repeated, out of order, unknown, of the wrong wire type, invalid.
func oddities(t testing.TB) map[string][]byte {
	t.Helper()
	field := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	entry := func(k, v string) []byte {
		return append(field(1, []byte(k)), field(2, []byte(v))...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	http := func(parts ...[]byte) []byte { // CheckRequest{attributes{request{http{parts}}}}
		return field(1, field(4, field(2, cat(parts...))))
	}
	varint := protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 7)
	md, err := proto.Marshal(&authv3.AttributeContext{MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ns": {Fields: map[string]*structpb.Value{"k": structpb.NewStringValue("v")}}}}})
	require.NoError(t, err)
	// A field number past protowire.MaxValidNumber, which ConsumeTag accepts and protobuf
	// rejects, in a map entry.
	tooLarge := protowire.AppendVarint(protowire.AppendTag(nil, protowire.MaxValidNumber+1, protowire.VarintType), 1)
	// Metadata nested deeper by one level each: protobuf's recursion limit counts from the
	// CheckRequest, so one of them is the deepest it takes and the next the first it refuses.
	nested := func(lists int) []byte {
		v := structpb.NewStringValue("x")
		for range lists {
			v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
		}
		b, err := proto.Marshal(&authv3.CheckRequest{Attributes: &authv3.AttributeContext{MetadataContext: &corev3.Metadata{
			FilterMetadata: map[string]*structpb.Struct{"ns": {Fields: map[string]*structpb.Value{"k": v}}}}}})
		require.NoError(t, err)
		return b
	}
	require.NoError(t, proto.Unmarshal(nested(4995), &authv3.CheckRequest{}), "protobuf's recursion limit moved: move the MetadataDepth cases")
	require.Error(t, proto.Unmarshal(nested(4998), &authv3.CheckRequest{}), "protobuf's recursion limit moved: move the MetadataDepth cases")
	vint := func(num protowire.Number, x uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), x)
	}
	peer := func(num protowire.Number, parts ...[]byte) []byte { // CheckRequest{attributes{source or destination{parts}}}
		return field(1, field(num, cat(parts...)))
	}
	sock := func(parts ...[]byte) []byte { return field(1, field(1, cat(parts...))) } // Peer.address{socket_address{parts}}
	pipe := field(1, field(2, field(1, []byte("/run/envoy.sock"))))                   // Peer.address{pipe{path}}
	// Peer.address{both members of the oneof, in this order}
	sockMember, pipeMember := field(1, field(2, []byte("10.0.0.4"))), field(2, field(1, []byte("/run/envoy.sock")))
	internalMember := field(3, field(1, []byte("listener")))
	reqTime := func(parts ...[]byte) []byte { return field(1, field(4, field(1, cat(parts...)))) }
	peers := map[string][]byte{
		"PeerEveryField": peer(1, sock(vint(1, 1), field(2, []byte("10.0.0.1")), vint(3, 8443), field(5, []byte("r")), vint(6, 1), field(7, []byte("/ns"))),
			field(2, []byte("svc")), field(3, entry("app", "web")), field(4, []byte("spiffe://td/ns/a/sa/b")), field(5, []byte("cert")), field(9, []byte("unknown"))),
		"PeerPipeThenSocket": peer(2, pipe, sock(field(2, []byte("10.0.0.2")))),
		"PeerSocketThenPipe": peer(2, sock(field(2, []byte("10.0.0.2"))), pipe),
		// A socket address again after a pipe replaced the first: a second SocketAddress
		// (the decoder's one-allocation messages hand out each message once).
		"PeerSocketPipeSocket":      peer(1, sock(field(2, []byte("10.0.0.2")), vint(3, 1)), pipe, sock(vint(3, 2))),
		"PortValueNamedValue":       peer(1, sock(vint(3, 80), field(4, []byte("http")), vint(3, 81))),
		"SourceSplitAndDest":        cat(peer(1, sock(vint(3, 1))), peer(2, sock(vint(3, 2))), peer(1, pipe, sock(vint(3, 3)))),
		"AddressPipeThenSocket":     peer(1, field(1, cat(pipeMember, sockMember))),
		"AddressSocketThenPipe":     peer(1, field(1, cat(sockMember, pipeMember))),
		"AddressSocketThenInternal": peer(1, field(1, cat(sockMember, internalMember))),
		"AddressInternalThenSocket": peer(1, field(1, cat(internalMember, sockMember, sockMember))),
		"PeerSocketTwice":           peer(1, sock(field(2, []byte("10.0.0.3")), vint(3, 1)), sock(vint(3, 2), field(5, []byte("x")))),
		"PeerSplit":                 cat(peer(1, field(4, []byte("p1")), sock(vint(3, 5))), peer(1, field(2, []byte("s")), sock(field(2, []byte("h"))))),
		"PortValueThenNamed":        peer(1, sock(vint(3, 80), field(4, []byte("http")))),
		"NamedThenPortValue":        peer(1, sock(field(4, []byte("http")), vint(3, 80))),
		"NamedPortTwice":            peer(1, sock(field(4, []byte("http")), field(4, []byte("https")))),
		"PortValueWrongWireType":    peer(1, sock(field(3, []byte("80")))),
		"PortValueOverflow":         peer(1, sock(vint(3, 1<<40|443))),
		"ProtocolNegative":          peer(1, sock(vint(1, ^uint64(0)))),
		"ProtocolUnknownValue":      peer(1, sock(vint(1, 1<<33|7))),
		"SocketWrongWireType":       peer(1, field(1, vint(1, 3))),
		"AddressUnknownField":       peer(1, field(1, cat(field(1, field(2, []byte("a"))), field(9, []byte("z"))))),
		"PeerWrongWireType":         field(1, cat(vint(1, 3), peer(2, field(4, []byte("p"))))),
		"PeerServiceWrongWireType":  peer(1, vint(2, 1)),
		"InvalidUTF8Principal":      peer(1, field(4, []byte("\xff"))),
		"InvalidUTF8Certificate":    peer(2, field(5, []byte("\xc3"))),
		"InvalidUTF8SocketAddress":  peer(1, sock(field(2, []byte("\xff")))),
		"InvalidUTF8NamedPort":      peer(1, sock(field(4, []byte("\xff")))),
		"InvalidUTF8Resolver":       peer(1, sock(field(5, []byte("\xff")))),
		"SocketTruncated":           peer(1, field(1, field(1, []byte{0x12, 0x05, 'a'}))),
		"AddressTruncated":          peer(1, field(1, []byte{0x0a, 0x05})),
		"TimeEveryField":            reqTime(vint(1, 1764288000), vint(2, 123456789)),
		"TimeNegativeAndOverflow":   reqTime(vint(1, ^uint64(0)), vint(2, 1<<40|5)),
		"TimeTwice":                 cat(reqTime(vint(1, 1)), reqTime(vint(2, 2))),
		"TimeWrongWireType":         reqTime(field(1, []byte("x")), vint(2, 3)),
		"TimeUnknownField":          reqTime(vint(1, 9), field(7, []byte("x"))),
		"TimeThenHTTP":              cat(reqTime(vint(1, 9)), http(field(4, []byte("/p")))),
		"TimeTruncated":             field(1, field(4, field(1, []byte{0x08}))),
	}
	out := map[string][]byte{
		"Empty":                {},
		"DuplicateHeaderKeys":  http(field(3, entry("a", "1")), field(3, entry("a", "2"))),
		"EntryFieldsReordered": http(field(3, cat(field(2, []byte("v")), field(1, []byte("k"))))),
		"EntryFieldRepeated":   http(field(3, cat(field(1, []byte("k")), field(1, []byte("k2")), field(2, []byte("v"))))),
		"EntryKeyOnly":         http(field(3, field(1, []byte("k")))),
		"EntryEmpty":           http(field(3, nil)),
		"EntryUnknownField":    http(field(3, cat(entry("k", "v"), field(9, []byte("x")), varint))),
		"EntryWrongWireType":   http(field(3, cat(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 5), field(2, []byte("v"))))),
		"HeadersWrongWireType": http(varint, field(3, entry("a", "1"))),
		"InvalidUTF8Key":       http(field(3, entry("\xff", "1"))),
		"InvalidUTF8Value":     http(field(3, entry("a", "\xc3"))),
		"InvalidUTF8Path":      http(field(4, []byte("/\xff"))),
		"RawBodyTwice":         http(field(12, []byte("first")), field(12, []byte("second"))),
		"RawBodyEmpty":         http(field(12, nil)),
		"HTTPSplit":            cat(http(field(3, entry("a", "1")), field(4, []byte("/p"))), http(field(3, entry("b", "2")), field(12, []byte("{}")))),
		"AttributesSplit":      cat(field(1, field(10, entry("route", "r"))), field(1, md), field(1, field(10, entry("x", "y")))),
		"UnknownEverywhere":    cat(field(99, []byte("top")), field(1, cat(field(98, []byte("attr")), field(4, cat(field(97, nil), field(2, field(96, []byte("http")))))))),
		"Truncated":            http(field(3, entry("a", "1")))[:9],
		"BadTag":               {0x00},
		"LengthPastEnd":        {0x0a, 0x05, 0x01},
		"Group":                protowire.AppendTag(protowire.AppendTag(nil, 5, protowire.StartGroupType), 5, protowire.EndGroupType),
		"UnmatchedEndGroup":    protowire.AppendTag(nil, 5, protowire.EndGroupType),
		"EntryNumberTooLarge":  http(field(3, cat(entry("k", "v"), tooLarge))),
		"ExtNumberTooLarge":    field(1, field(10, cat(entry("k", "v"), tooLarge))),
		"MetadataDepth4995":    nested(4995),
		"MetadataDepth4996":    nested(4996),
		"MetadataDepth4997":    nested(4997),
		"MetadataDepth4998":    nested(4998),
	}
	for k, v := range peers {
		out[k] = v
	}
	return out
}

func decodeBoth(t testing.TB, c encoding.CodecV2, b []byte) {
	want := &authv3.CheckRequest{}
	wantErr := proto.Unmarshal(b, want)
	got := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{ContextExtensions: map[string]string{"stale": "x"}}}
	gotErr := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("protobuf: %v; grpccodec: %v (input %x)", wantErr, gotErr, b)
	}
	if wantErr == nil && !proto.Equal(want, got) {
		t.Fatalf("protobuf decoded\n%v\ngrpccodec decoded\n%v\n(input %x)", want, got, b)
	}
}

// The codec decodes every CheckRequest exactly as protobuf does, and fails where it fails.
func TestUnmarshalCheckRequest_SameAsProtobuf(t *testing.T) {
	t.Parallel()
	c, err := grpccodec.New()
	require.NoError(t, err)
	for name, b := range fixtures(t) {
		t.Run(name, func(t *testing.T) { decodeBoth(t, c, b) })
	}
	for name, b := range oddities(t) {
		t.Run(name, func(t *testing.T) { decodeBoth(t, c, b) })
	}
	// The decoded message owns its bytes: the wire buffer is recycled after Unmarshal.
	b := fixtures(t)["openai_chat"]
	wire := append([]byte(nil), b...)
	var got authv3.CheckRequest
	require.NoError(t, c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &got))
	clear(wire)
	var want authv3.CheckRequest
	require.NoError(t, proto.Unmarshal(b, &want))
	require.True(t, proto.Equal(&want, &got))
	require.NotEmpty(t, got.GetAttributes().GetRequest().GetHttp().GetRawBody())
}

// A message that repeats an empty HttpRequest every six bytes costs no allocation per
// repetition (it cost 3 KB each: a 4 MB message allocated 2.5 GB).
func TestUnmarshalCheckRequest_RepeatedMessagesAllocateLittle(t *testing.T) {
	unit := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), // attributes
		protowire.AppendBytes(protowire.AppendTag(nil, 4, protowire.BytesType), // request
			protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), nil))) // http
	var b []byte
	for len(b) < 60_000 {
		b = append(b, unit...)
	}
	c, err := grpccodec.New()
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(5, func() {
		var m authv3.CheckRequest
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &m); err != nil {
			t.Fatal(err)
		}
	})
	require.Less(t, allocs, float64(100), "%d repetitions", len(b)/len(unit))
}

func FuzzUnmarshalCheckRequest(f *testing.F) {
	for _, b := range fixtures(f) {
		f.Add(b)
	}
	for _, b := range oddities(f) {
		f.Add(b)
	}
	c, err := grpccodec.New()
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, b []byte) { decodeBoth(t, c, b) })
}

// BenchmarkUnmarshal compares protobuf with the codec on an Envoy CheckRequest.
func BenchmarkUnmarshal(b *testing.B) {
	wire := fixtures(b)["openai_chat"]
	c, err := grpccodec.New()
	require.NoError(b, err)
	for _, bc := range []struct {
		name  string
		codec encoding.CodecV2
	}{{"protobuf", encoding.GetCodecV2("proto")}, {"grpccodec", c}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var m authv3.CheckRequest
				if err := bc.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
