package pricing

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MicrosPerUSD is the number of micros in one US dollar.
const MicrosPerUSD = 1_000_000

// ErrInvalidAmount is wrapped by every error of ParseMicros and ParseSignedMicros.
var ErrInvalidAmount = errors.New("invalid amount")

// FormatMicros formats an amount of micro-USD as a decimal USD string with exactly six
// decimals: 150 → "0.000150", 12_500_000 → "12.500000", -1 → "-0.000001". Every value of
// int64 is formatted exactly (no rounding, no float).
func FormatMicros(micros int64) string {
	u := uint64(micros)
	var buf [28]byte // "-", 14 digits of whole dollars, ".", 6 decimals
	b := buf[:0]
	if micros < 0 {
		b = append(b, '-')
		u = -u // two's complement: exact for math.MinInt64 too
	}
	whole, frac := u/MicrosPerUSD, u%MicrosPerUSD
	b = strconv.AppendUint(b, whole, 10)
	b = append(b, '.', '0', '0', '0', '0', '0', '0')
	for i := len(b) - 1; frac > 0; i-- {
		b[i] = byte('0' + frac%10)
		frac /= 10
	}
	return string(b) // the only allocation (headers format two of these per Check)
}

// ParseMicros parses a non-negative decimal USD string ("12", "12.5", "0.000150") into
// micro-USD. The accepted syntax is deliberately narrow so that every amount that enters
// purser is read the same way:
//
//   - one or more ASCII digits, optionally followed by "." and one to six digits;
//   - no sign, no spaces, no thousands separators, no exponent, no NaN/Inf, no leading ".";
//   - more than six decimals is an error, never a rounding;
//   - a value above math.MaxInt64 micros is an error.
//
// Use ParseSignedMicros where a negative amount is meaningful (adjustments, refunds).
func ParseMicros(s string) (int64, error) {
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("%w %q: negative amount not allowed", ErrInvalidAmount, s)
	}
	return parseMicros(s, s)
}

// ParseSignedMicros is ParseMicros that also accepts one leading "-" ("-0.50" → -500000).
// "+" is rejected. The range is [-math.MaxInt64, math.MaxInt64].
func ParseSignedMicros(s string) (int64, error) {
	if rest, ok := strings.CutPrefix(s, "-"); ok {
		v, err := parseMicros(s, rest)
		return -v, err
	}
	return parseMicros(s, s)
}

func parseMicros(orig, s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("%w %q: empty", ErrInvalidAmount, orig)
	}
	intPart, fracPart, hasDot := strings.Cut(s, ".")
	if intPart == "" {
		return 0, fmt.Errorf("%w %q: missing digits before the decimal point", ErrInvalidAmount, orig)
	}
	if hasDot && fracPart == "" {
		return 0, fmt.Errorf("%w %q: missing digits after the decimal point", ErrInvalidAmount, orig)
	}
	for _, part := range []string{intPart, fracPart} {
		for i := 0; i < len(part); i++ {
			c := part[i]
			if c >= '0' && c <= '9' {
				continue
			}
			if c == 'e' || c == 'E' {
				return 0, fmt.Errorf("%w %q: exponent not allowed", ErrInvalidAmount, orig)
			}
			return 0, fmt.Errorf("%w %q: unexpected character %q", ErrInvalidAmount, orig, c)
		}
	}
	if len(fracPart) > 6 {
		return 0, fmt.Errorf("%w %q: more than 6 decimal places", ErrInvalidAmount, orig)
	}
	intPart = strings.TrimLeft(intPart, "0")
	if len(intPart) > 19 {
		return 0, fmt.Errorf("%w %q: out of range", ErrInvalidAmount, orig)
	}
	var whole uint64
	if intPart != "" {
		w, err := strconv.ParseUint(intPart, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w %q: out of range", ErrInvalidAmount, orig)
		}
		whole = w
	}
	var frac uint64
	for i := range 6 {
		frac *= 10
		if i < len(fracPart) {
			frac += uint64(fracPart[i] - '0')
		}
	}
	if whole > (math.MaxInt64-frac)/MicrosPerUSD {
		return 0, fmt.Errorf("%w %q: out of range", ErrInvalidAmount, orig)
	}
	return int64(whole*MicrosPerUSD + frac), nil
}

// priceScale is the number of decimal places a catalog price (USD per million tokens) may
// have. A price p USD/MTok is stored as the integer p×10^9 (type Price). Because
// 1 USD/MTok = 1 micro-USD per token, a Price is also 10^-9 micros per token, so
// tokens × Price is an exact cost in units of 10^-9 micros.
const priceScale = 9

// maxPrice bounds a price at 1,000,000 USD per million tokens (or per thousand requests),
// which keeps every product of a price and an int64 token count inside 128 bits.
const maxPrice = 1_000_000 * 1_000_000_000

// Price is a price in units of 10^-9 USD per million tokens (or per thousand requests for
// requests_kcount): 2.5 USD/MTok is Price(2_500_000_000).
type Price int64

// String formats the price as a decimal USD string without trailing zeros ("2.5", "0.075").
func (p Price) String() string {
	s := strconv.FormatInt(int64(p)/1_000_000_000, 10)
	frac := int64(p) % 1_000_000_000
	if frac == 0 {
		return s
	}
	f := strconv.FormatInt(frac, 10)
	f = strings.Repeat("0", priceScale-len(f)) + f
	return s + "." + strings.TrimRight(f, "0")
}

// decimal is an exact decimal number parsed from JSON/YAML number text: digits×10^exp.
type decimal struct {
	neg    bool
	digits string // no leading zeros; "" means zero
	exp    int
}

// maxNumberText bounds the length of numeric text we are willing to parse.
const maxNumberText = 64

// parseDecimal parses JSON number syntax (optional "-", digits, optional fraction, optional
// exponent) exactly. It also accepts a leading "+" in the exponent only. Exponents are bounded
// so that a hostile "1e999999999" cannot cost time or memory.
func parseDecimal(s string) (decimal, error) {
	var d decimal
	if s == "" {
		return d, errors.New("empty number")
	}
	if len(s) > maxNumberText {
		return d, fmt.Errorf("number %.20q... is too long", s)
	}
	i := 0
	if s[0] == '-' {
		d.neg = true
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	intDigits := s[start:i]
	if intDigits == "" {
		return d, fmt.Errorf("invalid number %q", s)
	}
	fracDigits := ""
	if i < len(s) && s[i] == '.' {
		i++
		fs := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		fracDigits = s[fs:i]
		if fracDigits == "" {
			return d, fmt.Errorf("invalid number %q", s)
		}
	}
	exp := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		eneg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			eneg = s[i] == '-'
			i++
		}
		es := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if es == i || i-es > 4 {
			return d, fmt.Errorf("invalid or out-of-range exponent in %q", s)
		}
		e, _ := strconv.Atoi(s[es:i])
		if eneg {
			e = -e
		}
		exp = e
	}
	if i != len(s) {
		return d, fmt.Errorf("invalid number %q", s)
	}
	digits := strings.TrimLeft(intDigits+fracDigits, "0")
	exp -= len(fracDigits)
	// Normalise: strip trailing zeros into the exponent.
	for len(digits) > 0 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		exp++
	}
	if digits == "" {
		exp = 0
	}
	d.digits, d.exp = digits, exp
	return d, nil
}

// scaled returns d×10^scale as an int64 when it is an exact integer not above limit.
// It reports errNotExact or errTooLarge otherwise.
func (d decimal) scaled(scale int, limit uint64) (uint64, error) {
	if d.digits == "" {
		return 0, nil
	}
	e := d.exp + scale
	if e < 0 {
		return 0, errNotExact
	}
	if len(d.digits)+e > 19 {
		return 0, errTooLarge
	}
	v, err := strconv.ParseUint(d.digits, 10, 64)
	if err != nil {
		return 0, errTooLarge
	}
	for range e {
		if v > math.MaxUint64/10 {
			return 0, errTooLarge
		}
		v *= 10
	}
	if v > limit {
		return 0, errTooLarge
	}
	return v, nil
}

var (
	errNotExact = errors.New("not exact")
	errTooLarge = errors.New("too large")
)

// parsePrice parses a price number text (USD per million tokens) into a Price.
func parsePrice(s string) (Price, error) {
	d, err := parseDecimal(s)
	if err != nil {
		return 0, err
	}
	if d.neg && d.digits != "" {
		return 0, errors.New("must be >= 0")
	}
	v, err := d.scaled(priceScale, maxPrice)
	switch {
	case errors.Is(err, errNotExact):
		return 0, fmt.Errorf("%s has more than %d decimal places and cannot be represented exactly", s, priceScale)
	case errors.Is(err, errTooLarge):
		return 0, fmt.Errorf("%s is above the maximum of 1000000", s)
	}
	return Price(v), nil
}
