// Package grpccodec is purser's gRPC codec: protobuf, marshalled through the vtprotobuf
// methods go-control-plane generates for Envoy's messages (MarshalToSizedBufferVTStrict,
// SizeVT) when a message has them, and through google.golang.org/protobuf otherwise.
// go-control-plane generates no vtprotobuf decoder: CheckRequests, the Check path's input,
// are decoded by unmarshalCheckRequest; a receiver that decodes itself (encoding.
// BinaryUnmarshaler, e.g. the access-log sink's) gets the message's bytes; every other message
// is decoded by protobuf.
//
// Encoding each CheckResponse (its dynamic-metadata Struct, header options) with protobuf's
// reflection-driven marshaller took about a sixth of the Check path's CPU in the bench
// profile; the generated code does the same encoding without reflection.
package grpccodec

import (
	stdencoding "encoding"
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Name is the codec's name: it replaces the default "proto" codec on the server.
const Name = encproto.Name

// vtMarshaler is what go-control-plane's *_vtproto.pb.go files generate.
type vtMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVTStrict(dAtA []byte) (int, error)
}

// Codec implements encoding.CodecV2.
type Codec struct {
	fallback encoding.CodecV2
}

// New returns the codec, falling back to the registered protobuf codec.
func New() (*Codec, error) {
	fb := encoding.GetCodecV2(Name)
	if fb == nil {
		return nil, fmt.Errorf("grpccodec: no %q codec registered", Name)
	}
	return &Codec{fallback: fb}, nil
}

// ServerOption installs the codec on a gRPC server.
func ServerOption() (grpc.ServerOption, error) {
	c, err := New()
	if err != nil {
		return nil, err
	}
	return grpc.ForceServerCodecV2(c), nil
}

// Name implements encoding.CodecV2.
func (c *Codec) Name() string { return Name }

// Marshal implements encoding.CodecV2.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMarshaler)
	if !ok {
		return c.fallback.Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if err := marshalInto(m, buf); err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if err := marshalInto(m, (*buf)[:size]); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// marshalInto fills buf, sized by SizeVT, from its end (how the generated code writes).
func marshalInto(m vtMarshaler, buf []byte) error {
	n, err := m.MarshalToSizedBufferVTStrict(buf)
	if err != nil {
		return fmt.Errorf("grpccodec: marshal %T: %w", m, err)
	}
	if n != len(buf) {
		return fmt.Errorf("grpccodec: marshal %T: wrote %d bytes, sized %d", m, n, len(buf))
	}
	return nil
}

// Unmarshal implements encoding.CodecV2: CheckRequests through unmarshalCheckRequest, a
// BinaryUnmarshaler through its UnmarshalBinary (the bytes are valid only during the call),
// every other message through protobuf.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	// A direct call in each case: a closure over the message would cost an allocation.
	var err error
	switch m := v.(type) {
	case *authv3.CheckRequest:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		err = unmarshalCheckRequest(buf.ReadOnlyData(), m)
		buf.Free()
	case stdencoding.BinaryUnmarshaler:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		err = m.UnmarshalBinary(buf.ReadOnlyData())
		buf.Free()
	default:
		return c.fallback.Unmarshal(data, v)
	}
	if err != nil {
		return fmt.Errorf("grpccodec: unmarshal %T: %w", v, err)
	}
	return nil
}

// Generated reports whether v is marshalled by generated code: false for every message when
// purser was built without the vtprotobuf tag.
func Generated(v any) bool {
	_, ok := v.(vtMarshaler)
	return ok
}
