package pbwire

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// seeds are well-formed and malformed messages of each wire type.
func seeds(tb testing.TB) [][]byte {
	tb.Helper()
	st, err := structpb.NewStruct(map[string]any{"a": 1.5, "b": "x", "c": []any{true, nil}, "d": map[string]any{"e": "f"}})
	if err != nil {
		tb.Fatal(err)
	}
	msg, err := proto.Marshal(st)
	if err != nil {
		tb.Fatal(err)
	}
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 300)
	b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 7)
	b = protowire.AppendTag(b, 3, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 9)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("hi"))
	b = protowire.AppendTag(b, 5, protowire.StartGroupType)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	b = protowire.AppendTag(b, 5, protowire.EndGroupType)
	big := protowire.AppendTag(nil, protowire.MaxValidNumber+1, protowire.VarintType)
	big = protowire.AppendVarint(big, 1)
	return [][]byte{msg, b, b[:len(b)-1], big, {0x08}, {0x0c}, {0x0a, 0x05, 'a'}, {0x00, 0x01},
		protowire.AppendTag(nil, 1, protowire.EndGroupType)}
}

func TestNext(t *testing.T) {
	t.Parallel()
	s := seeds(t)
	var fs []Field
	require := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Fatalf(format, args...)
		}
	}
	require(Walk(s[1], func(f *Field) error { fs = append(fs, *f); return nil }) == nil, "a well-formed message walks without error")
	require(len(fs) == 5, "5 fields, got %d", len(fs))
	require(fs[0].Num == 1 && fs[0].Type == protowire.VarintType && fs[0].Scalar == 300, "varint 300 in field 1, got %+v", fs[0])
	require(fs[1].Num == 2 && fs[1].Type == protowire.Fixed32Type && fs[1].Scalar == 7, "fixed32 7 in field 2, got %+v", fs[1])
	require(fs[2].Num == 3 && fs[2].Type == protowire.Fixed64Type && fs[2].Scalar == 9, "fixed64 9 in field 3, got %+v", fs[2])
	require(fs[3].Num == 4 && string(fs[3].Bytes) == "hi", `bytes "hi" in field 4, got %+v`, fs[3])
	require(fs[4].Num == 5 && fs[4].Type == protowire.StartGroupType && len(fs[4].Raw) == 4, "a 4-byte group in field 5, got %+v", fs[4])
	require(errors.Is(Walk(s[3], func(*Field) error { return nil }), ErrFieldNumber), "field number 2^29 is refused with ErrFieldNumber")
	stop := errors.New("stop")
	require(errors.Is(Walk(s[1], func(*Field) error { return stop }), stop), "fn's error ends the walk")
}

// FuzzNext: Walk accepts exactly what proto.Unmarshal accepts into a message that keeps every
// field unknown, and the fields' Raw bytes put back together are the input; each field's
// value is what protowire reads from its Raw bytes.
func FuzzNext(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var joined []byte
		err := Walk(b, func(fd *Field) error {
			joined = append(joined, fd.Raw...)
			num, typ, n := protowire.ConsumeTag(fd.Raw)
			if n < 0 || num != fd.Num || typ != fd.Type {
				t.Fatalf("field %+v: its Raw bytes start with tag %d/%d (%d bytes): want the field's number and type", fd, num, typ, n)
			}
			switch typ {
			case protowire.BytesType:
				v, _ := protowire.ConsumeBytes(fd.Raw[n:])
				if !bytes.Equal(v, fd.Bytes) {
					t.Fatalf("field %+v: Bytes differ from the value in Raw (%x)", fd, v)
				}
			case protowire.VarintType:
				if v, _ := protowire.ConsumeVarint(fd.Raw[n:]); v != fd.Scalar {
					t.Fatalf("field %+v: Scalar differs from the varint in Raw (%d)", fd, v)
				}
			}
			return nil
		})
		perr := proto.Unmarshal(b, &emptypb.Empty{})
		if (err == nil) != (perr == nil) {
			t.Fatalf("%x: Walk says %v, proto.Unmarshal says %v: want both to accept or both to refuse", b, err, perr)
		}
		if err == nil && !bytes.Equal(joined, b) {
			t.Fatalf("%x: the fields' Raw bytes join to %x: want the input", b, joined)
		}
	})
}
