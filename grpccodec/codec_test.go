package grpccodec_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/internal/testkit"
)

// okResponse is shaped like purser's admission: headers to remove and add, dynamic metadata.
func okResponse() *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: 0},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			HeadersToRemove: []string{"authorization"},
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "x-budget-limit", Value: "100.000000"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
				{Header: &corev3.HeaderValue{Key: "x-budget-remaining", Value: "99.999832"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
			},
		}},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			"purser_decision": structpb.NewStringValue("reserved"),
			"reservation_id":  structpb.NewStringValue("019ac5b1-0000-7000-8000-000000000001"),
			"reserved_micros": structpb.NewStringValue("168"),
			"provider":        structpb.NewStringValue("openai"),
			"model":           structpb.NewStringValue("gpt-4o-mini"),
			"nested":          structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"n": structpb.NewNumberValue(1.5), "b": structpb.NewBoolValue(true), "l": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNullValue()}})}}),
		}},
	}
}

func deniedResponse(body string) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: 8, Message: "budget exhausted"},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "content-type", Value: "application/json"}}},
			Body:    body,
		}},
	}
}

// Whatever path encodes a message, protobuf decodes exactly the message back.
func TestMarshal_RoundTrips(t *testing.T) {
	t.Parallel()
	c, err := grpccodec.New()
	require.NoError(t, err)
	require.Equal(t, "proto", c.Name())
	msgs := map[string]proto.Message{
		"OK":          okResponse(),
		"Denied":      deniedResponse(`{"error":{"type":"budget_exceeded"}}`),
		"DeniedLarge": deniedResponse(strings.Repeat("x", 256<<10)), // above gRPC's buffer-pooling threshold
		"Empty":       &authv3.CheckResponse{},
		"Fallback":    &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, // no vtprotobuf methods
	}
	for name, m := range msgs {
		t.Run(name, func(t *testing.T) {
			data, err := c.Marshal(m)
			require.NoError(t, err)
			b := data.Materialize()
			data.Free()
			got := m.ProtoReflect().New().Interface()
			require.NoError(t, proto.Unmarshal(b, got))
			require.True(t, proto.Equal(m, got), "got %v", got)
			std, err := proto.Marshal(m)
			require.NoError(t, err)
			require.Len(t, b, len(std))
		})
	}
	_, err = c.Marshal("not a message")
	require.Error(t, err)
}

// selfDecoding records the bytes the codec hands it.
type selfDecoding struct {
	got []byte
	err error
}

func (s *selfDecoding) UnmarshalBinary(b []byte) error {
	s.got = append([]byte(nil), b...)
	return s.err
}

// A receiver that decodes itself gets the whole message, however gRPC split it into buffers,
// and its error comes back wrapped.
func TestUnmarshal_BinaryUnmarshaler(t *testing.T) {
	t.Parallel()
	c, err := grpccodec.New()
	require.NoError(t, err)
	data := mem.BufferSlice{mem.SliceBuffer("first "), mem.SliceBuffer("second")}
	var s selfDecoding
	require.NoError(t, c.Unmarshal(data, &s))
	require.Equal(t, "first second", string(s.got))

	s.err = errors.New("bad wire data")
	err = c.Unmarshal(data, &s)
	require.ErrorIs(t, err, s.err)
	require.ErrorContains(t, err, "selfDecoding")
}

type authServer struct {
	authv3.UnimplementedAuthorizationServer
}

func (authServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse(), nil
}

// Over a real socket, a stock client reads what a server with the codec answers, and the
// server decodes what the client sends.
func TestServer_RealSocket(t *testing.T) {
	t.Parallel()
	opt, err := grpccodec.ServerOption()
	require.NoError(t, err)
	gs := grpc.NewServer(opt)
	authv3.RegisterAuthorizationServer(gs, authServer{})
	conn := testkit.ServeAndDial(t, gs)
	resp, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), &authv3.CheckRequest{})
	require.NoError(t, err)
	require.True(t, proto.Equal(okResponse(), resp))
}

// BenchmarkMarshal compares the stock protobuf codec with this one on purser's admission.
func BenchmarkMarshal(b *testing.B) {
	c, err := grpccodec.New()
	require.NoError(b, err)
	for _, bc := range []struct {
		name  string
		codec encoding.CodecV2
	}{{"protobuf", encoding.GetCodecV2("proto")}, {"vtprotobuf", c}} {
		b.Run(bc.name, func(b *testing.B) {
			m := okResponse()
			b.ReportAllocs()
			for b.Loop() {
				data, err := bc.codec.Marshal(m)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}
