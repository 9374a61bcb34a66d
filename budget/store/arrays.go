package store

import "github.com/jackc/pgx/v5/pgtype"

// Column arrays for purser_reserve without a heap allocation per element. pgx encodes a
// plain []int64 or []string through pgtype.FlatArray, whose Index returns each element as an
// interface: every string and every integer above 255 is boxed on the heap (a dozen
// allocations per request of a batch, in the batcher's goroutine). These types hand out a
// one-pointer struct instead, which an interface holds without allocating, and which pgx
// encodes through Int64Valuer and TextValuer: the same bytes on the wire (binary int8, int4
// and text elements), the same NULL for a nil slice.

// int64s is an int8[] (or int4[]) parameter.
type int64s []int64

// int64Elem is one element of an int64s.
type int64Elem struct{ p *int64 }

func (e int64Elem) Int64Value() (pgtype.Int8, error) {
	return pgtype.Int8{Int64: *e.p, Valid: true}, nil
}

func (a int64s) Dimensions() []pgtype.ArrayDimension { return dims(len(a), a == nil) }
func (a int64s) Index(i int) any                     { return int64Elem{&a[i]} }
func (a int64s) IndexType() any                      { return int64Elem{} }

// int32s is an int4[] parameter.
type int32s []int32

// int32Elem is one element of an int32s.
type int32Elem struct{ p *int32 }

func (e int32Elem) Int64Value() (pgtype.Int8, error) {
	return pgtype.Int8{Int64: int64(*e.p), Valid: true}, nil
}

func (a int32s) Dimensions() []pgtype.ArrayDimension { return dims(len(a), a == nil) }
func (a int32s) Index(i int) any                     { return int32Elem{&a[i]} }
func (a int32s) IndexType() any                      { return int32Elem{} }

// texts is a text[] parameter.
type texts []string

// textElem is one element of a texts.
type textElem struct{ p *string }

func (e textElem) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: *e.p, Valid: true}, nil
}

func (a texts) Dimensions() []pgtype.ArrayDimension { return dims(len(a), a == nil) }
func (a texts) Index(i int) any                     { return textElem{&a[i]} }
func (a texts) IndexType() any                      { return textElem{} }

// dims is a one-dimensional array's dimensions as pgtype.FlatArray gives them (nil: NULL).
func dims(n int, null bool) []pgtype.ArrayDimension {
	if null {
		return nil
	}
	return []pgtype.ArrayDimension{{Length: int32(n), LowerBound: 1}}
}

// byteas is a bytea[] parameter; a nil element is NULL, as with [][]byte.
type byteas [][]byte

// byteaElem is one element of a byteas.
type byteaElem struct{ p *[]byte }

func (e byteaElem) BytesValue() ([]byte, error) { return *e.p, nil }

func (a byteas) Dimensions() []pgtype.ArrayDimension { return dims(len(a), a == nil) }
func (a byteas) Index(i int) any                     { return byteaElem{&a[i]} }
func (a byteas) IndexType() any                      { return byteaElem{} }
