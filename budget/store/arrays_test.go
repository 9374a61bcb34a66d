package store

import (
	"bytes"
	"math"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// TestArrays_EncodeAsPlainSlices: each array type encodes to the bytes pgx writes for the
// plain slice it wraps, in both formats: nil (NULL), empty, and values that box on the heap.
func TestArrays_EncodeAsPlainSlices(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	cases := []struct {
		name        string
		oid         uint32
		plain, ours any
	}{
		{"int8 nil", pgtype.Int8ArrayOID, []int64(nil), int64s(nil)},
		{"int8 empty", pgtype.Int8ArrayOID, []int64{}, int64s{}},
		{"int8", pgtype.Int8ArrayOID, []int64{0, 1, 255, 256, -1, math.MaxInt64, math.MinInt64}, int64s{0, 1, 255, 256, -1, math.MaxInt64, math.MinInt64}},
		{"int4 nil", pgtype.Int4ArrayOID, []int32(nil), int32s(nil)},
		{"int4", pgtype.Int4ArrayOID, []int32{0, 1, 300, math.MaxInt32, math.MinInt32}, int32s{0, 1, 300, math.MaxInt32, math.MinInt32}},
		{"text nil", pgtype.TextArrayOID, []string(nil), texts(nil)},
		{"text", pgtype.TextArrayOID, []string{"", "a", "team:ml,user:x", "with \"quotes\" and {braces}", "NULL", "é"}, texts{"", "a", "team:ml,user:x", "with \"quotes\" and {braces}", "NULL", "é"}},
		{"bytea nil", pgtype.ByteaArrayOID, [][]byte(nil), byteas(nil)},
		{"bytea", pgtype.ByteaArrayOID, [][]byte{nil, {}, {0, 1, 2}, nil}, byteas{nil, {}, {0, 1, 2}, nil}},
	}
	for _, c := range cases {
		for _, format := range []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode} {
			want, err := m.Encode(c.oid, format, c.plain, nil)
			if err != nil {
				t.Fatalf("%s (format %d): plain slice: %v", c.name, format, err)
			}
			got, err := m.Encode(c.oid, format, c.ours, nil)
			if err != nil {
				t.Fatalf("%s (format %d): %v", c.name, format, err)
			}
			if !bytes.Equal(got, want) || (got == nil) != (want == nil) {
				t.Fatalf("%s (format %d): encoded %q (nil %v), want the plain slice's %q (nil %v)", c.name, format, got, got == nil, want, want == nil)
			}
		}
	}
}
