// Package pbwire walks the protobuf wire format field by field, for the decoders that read
// Envoy's messages without protobuf's reflection (grpccodec's CheckRequest decoder, the
// access-log sink's). It is the one place that says what a well-formed field is, and it says
// it as protobuf does: a message that proto.Unmarshal rejects as malformed (into a message
// that keeps every field as unknown) fails here too, and the fields Next returns put back
// together are the message (FuzzNext).
//
// The rules: a tag is a valid varint with a field number in 1..2^29-1 (protowire.ConsumeTag
// alone lets numbers up to 2^31-1 through) and a wire type other than an end-group; a varint
// has at most 10 bytes; a length-delimited value fits in what is left; a group is closed by an
// end-group of its own number, and groups nest at most protowire.DefaultRecursionLimit deep.
package pbwire

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrFieldNumber is a tag whose field number is above protowire.MaxValidNumber.
var ErrFieldNumber = errors.New("invalid field number")

// Field is one field of a message as it is on the wire. Bytes and Raw alias the input.
type Field struct {
	Num  protowire.Number
	Type protowire.Type
	// Bytes is a length-delimited field's value.
	Bytes []byte
	// Scalar is a varint's value, or a fixed32's or fixed64's bits.
	Scalar uint64
	// Raw is the whole field, tag included (a group with its end-group tag).
	Raw []byte
}

// Next reads the field at the start of b, which must not be empty, and returns it with what
// follows it. On malformed input it returns an error (a protowire.ParseError, or
// ErrFieldNumber) and nothing else.
func Next(b []byte) (f Field, rest []byte, err error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return Field{}, nil, protowire.ParseError(n)
	}
	if num > protowire.MaxValidNumber {
		return Field{}, nil, ErrFieldNumber
	}
	var vn int
	switch typ {
	case protowire.BytesType:
		f.Bytes, vn = protowire.ConsumeBytes(b[n:])
	case protowire.VarintType:
		f.Scalar, vn = protowire.ConsumeVarint(b[n:])
	case protowire.Fixed64Type:
		f.Scalar, vn = protowire.ConsumeFixed64(b[n:])
	case protowire.Fixed32Type:
		var x uint32
		x, vn = protowire.ConsumeFixed32(b[n:])
		f.Scalar = uint64(x)
	default: // groups; an end-group here closes nothing and is an error
		vn = protowire.ConsumeFieldValue(num, typ, b[n:])
	}
	if vn < 0 {
		return Field{}, nil, protowire.ParseError(vn)
	}
	f.Num, f.Type, f.Raw = num, typ, b[:n+vn]
	return f, b[n+vn:], nil
}

// Walk calls fn with each field of b in order, stopping at the first error, fn's or the
// input's.
func Walk(b []byte, fn func(f *Field) error) error {
	for len(b) > 0 {
		f, rest, err := Next(b)
		if err != nil {
			return err
		}
		if err := fn(&f); err != nil {
			return err
		}
		b = rest
	}
	return nil
}
