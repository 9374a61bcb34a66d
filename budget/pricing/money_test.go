package pricing

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFormatMicros(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   int64
		want string
	}{
		{"Zero", 0, "0.000000"},
		{"OneMicro", 1, "0.000001"},
		{"Cheap", 150, "0.000150"},
		{"TwelveFifty", 12_500_000, "12.500000"},
		{"OneDollar", 1_000_000, "1.000000"},
		{"Negative", -1, "-0.000001"},
		{"NegativeWhole", -2_000_150, "-2.000150"},
		{"MaxInt64", math.MaxInt64, "9223372036854.775807"},
		{"MinInt64", math.MinInt64, "-9223372036854.775808"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, FormatMicros(tt.in))
		})
	}
}

// TestFormatMicros_MatchesSprintf compares FormatMicros with the obvious fmt formulation on
// values around every power of ten and a pseudo-random spread (allocation-free formatting
// must not change a single output).
func TestFormatMicros_MatchesSprintf(t *testing.T) {
	t.Parallel()
	ref := func(v int64) string {
		sign, u := "", uint64(v)
		if v < 0 {
			sign, u = "-", -u
		}
		return fmt.Sprintf("%s%d.%06d", sign, u/MicrosPerUSD, u%MicrosPerUSD)
	}
	var vals []int64
	for p := int64(1); p > 0 && p <= math.MaxInt64/10; p *= 10 {
		vals = append(vals, p-1, p, p+1, -p+1, -p, -p-1, 7*p, -7*p)
	}
	x := uint64(0x9e3779b97f4a7c15)
	for range 10_000 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		vals = append(vals, int64(x), int64(x>>(x%64)))
	}
	for _, v := range vals {
		require.Equal(t, ref(v), FormatMicros(v), "FormatMicros(%d)", v)
	}
}

func TestParseMicros(t *testing.T) {
	t.Parallel()
	testParse(t, ParseMicros, ErrInvalidAmount, []parseCase[int64]{
		{name: "Integer", in: "12", want: 12_000_000},
		{name: "OneDecimal", in: "12.5", want: 12_500_000},
		{name: "TwoDecimals", in: "12.50", want: 12_500_000},
		{name: "SixDecimals", in: "0.000150", want: 150},
		{name: "LeadingZeros", in: "007.000001", want: 7_000_001},
		{name: "Zero", in: "0", want: 0},
		{name: "Max", in: "9223372036854.775807", want: math.MaxInt64},
		{name: "Empty", in: "", wantErr: `invalid amount "": empty`},
		{name: "Negative", in: "-1", wantErr: `invalid amount "-1": negative amount not allowed`},
		{name: "Plus", in: "+1", wantErr: `invalid amount "+1": unexpected character '+'`},
		{name: "SevenDecimals", in: "0.0000001", wantErr: `invalid amount "0.0000001": more than 6 decimal places`},
		{name: "Exponent", in: "1e6", wantErr: `invalid amount "1e6": exponent not allowed`},
		{name: "ExponentUpper", in: "1.5E2", wantErr: `invalid amount "1.5E2": exponent not allowed`},
		{name: "NaN", in: "NaN", wantErr: `invalid amount "NaN": unexpected character 'N'`},
		{name: "Inf", in: "Inf", wantErr: `invalid amount "Inf": unexpected character 'I'`},
		{name: "LeadingDot", in: ".5", wantErr: `invalid amount ".5": missing digits before the decimal point`},
		{name: "TrailingDot", in: "5.", wantErr: `invalid amount "5.": missing digits after the decimal point`},
		{name: "TwoDots", in: "1.2.3", wantErr: `invalid amount "1.2.3": unexpected character '.'`},
		{name: "Space", in: " 1", wantErr: `invalid amount " 1": unexpected character ' '`},
		{name: "Comma", in: "1,000", wantErr: `invalid amount "1,000": unexpected character ','`},
		{name: "Overflow", in: "9223372036854.775808", wantErr: `invalid amount "9223372036854.775808": out of range`},
		{name: "HugeOverflow", in: "99999999999999999999999", wantErr: `invalid amount "99999999999999999999999": out of range`},
	})
}

func TestParseSignedMicros(t *testing.T) {
	t.Parallel()
	testParse(t, ParseSignedMicros, ErrInvalidAmount, []parseCase[int64]{
		{name: "Positive", in: "0.50", want: 500_000},
		{name: "Negative", in: "-0.50", want: -500_000},
		{name: "NegativeZero", in: "-0", want: 0},
		{name: "MinAllowed", in: "-9223372036854.775807", want: -math.MaxInt64},
		{name: "OnlyMinus", in: "-", wantErr: `invalid amount "-": empty`},
		{name: "DoubleMinus", in: "--1", wantErr: `invalid amount "--1": unexpected character '-'`},
		{name: "NegativeOverflow", in: "-9223372036854.775808", wantErr: `invalid amount "-9223372036854.775808": out of range`},
	})
}

func TestParsePrice(t *testing.T) {
	t.Parallel()
	testParse(t, parsePrice, nil, []parseCase[Price]{
		{name: "Integer", in: "3", want: 3_000_000_000},
		{name: "Decimal", in: "0.15", want: 150_000_000},
		{name: "ThreeDecimals", in: "0.075", want: 75_000_000},
		{name: "NineDecimals", in: "0.000000001", want: 1},
		{name: "Exponent", in: "1e-07", want: 100},
		{name: "ExponentPositive", in: "2.5E+1", want: 25_000_000_000},
		{name: "TrailingZeros", in: "3.750000000000", want: 3_750_000_000},
		{name: "NegativeZero", in: "-0", want: 0},
		{name: "Max", in: "1000000", want: maxPrice},
		{name: "FloatArtifact", in: "0.18000000000000002", wantErr: "0.18000000000000002 has more than 9 decimal places and cannot be represented exactly"},
		{name: "Negative", in: "-0.5", wantErr: "must be >= 0"},
		{name: "TooLarge", in: "1000000.000000001", wantErr: "1000000.000000001 is above the maximum of 1000000"},
		{name: "HugeExponent", in: "1e99999", wantErr: `invalid or out-of-range exponent in "1e99999"`},
		{name: "Garbage", in: "abc", wantErr: `invalid number "abc"`},
		{name: "NaN", in: "NaN", wantErr: `invalid number "NaN"`},
	})
}

// parseCase is one input of a parser test: want, or the exact error wantErr.
type parseCase[T any] struct {
	name    string
	in      string
	want    T
	wantErr string
}

// testParse runs parse on every case; errors must also wrap wantIs when it is not nil.
func testParse[T any](t *testing.T, parse func(string) (T, error), wantIs error, tests []parseCase[T]) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parse(tt.in)
			if tt.wantErr != "" {
				if wantIs != nil {
					require.ErrorIs(t, err, wantIs)
				}
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestPrice_String(t *testing.T) {
	t.Parallel()
	require.Equal(t, "2.5", Price(2_500_000_000).String())
	require.Equal(t, "0.075", Price(75_000_000).String())
	require.Equal(t, "3", Price(3_000_000_000).String())
	require.Equal(t, "0.000000001", Price(1).String())
}

// FuzzParseMicros checks that ParseSignedMicros never panics, that whatever it accepts
// formats back to the same value, and that ParseMicros agrees with it on non-negative input.
func FuzzParseMicros(f *testing.F) {
	for _, s := range []string{"0", "12.50", "0.000150", "-3.1", "1e6", "NaN", ".5", "9223372036854.775807",
		"9223372036854.775808", "-9223372036854.775808", "00000000000000000000001.1", "1.", "+1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSignedMicros(s)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidAmount)
			return
		}
		back, err := ParseSignedMicros(FormatMicros(v))
		require.NoError(t, err)
		require.Equal(t, v, back)
		u, uerr := ParseMicros(s)
		if strings.HasPrefix(s, "-") {
			require.Error(t, uerr)
		} else {
			require.NoError(t, uerr)
			require.Equal(t, v, u)
		}
	})
}
