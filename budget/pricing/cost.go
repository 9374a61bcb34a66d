package pricing

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// Errors returned by Cost and UpperBound.
var (
	// ErrOverflow: the cost does not fit in an int64 number of micros.
	ErrOverflow = errors.New("cost overflows int64 micros")
	// ErrInvalidUsage: usage values are negative or inconsistent (a part larger than its
	// total), or a response carried a malformed usage value.
	ErrInvalidUsage = errors.New("invalid usage")
)

// Usage is the normalised token usage of one request, in whole tokens. It follows the
// genai-prices convention, where the totals include their parts:
//
//   - InputTokens is the request's TOTAL input: uncached text + CacheReadTokens +
//     CacheWriteTokens + InputAudioTokens (OpenAI prompt_tokens, Gemini promptTokenCount;
//     for Anthropic it is input_tokens + cache_creation_input_tokens + cache_read_input_tokens).
//   - CacheReadTokens and CacheWriteTokens are the parts of InputTokens read from / written to
//     the provider's prompt cache. CacheAudioReadTokens is the part of CacheReadTokens (and of
//     InputAudioTokens) that is audio.
//   - InputAudioTokens is the audio part of InputTokens.
//   - OutputTokens is the TOTAL output: text + reasoning + OutputAudioTokens (OpenAI
//     completion_tokens, Gemini candidatesTokenCount + thoughtsTokenCount).
//   - ReasoningTokens is the reasoning/thinking part of OutputTokens. It is recorded for
//     reports only; reasoning is billed as output and is already in OutputTokens.
//   - OutputAudioTokens is the audio part of OutputTokens.
//
// Cost charges each part at its own price when the model has one and the remainder of a total
// at the total's price; a part without its own price is charged with its total.
type Usage struct {
	InputTokens          int64 `json:"input_tokens"`
	OutputTokens         int64 `json:"output_tokens"`
	CacheReadTokens      int64 `json:"cache_read_tokens"`
	CacheWriteTokens     int64 `json:"cache_write_tokens"`
	ReasoningTokens      int64 `json:"reasoning_tokens"`
	InputAudioTokens     int64 `json:"input_audio_tokens"`
	OutputAudioTokens    int64 `json:"output_audio_tokens"`
	CacheAudioReadTokens int64 `json:"cache_audio_read_tokens"`
}

// Cost is the price of a Usage in micro-USD.
//
// Total is the exact cost rounded up once to the next micro. Input is the exact input-side
// cost (uncached input, cache reads and writes, input audio, and the per-request price if
// the model has one) rounded up; Output is Total − Input. So Input + Output == Total always,
// Input ≥ its exact value and Output is its exact value rounded up or down (by less than one
// micro).
type Cost struct {
	Input  int64 `json:"input"`
	Output int64 `json:"output"`
	Total  int64 `json:"total"`
}

// unit indexes the priced token kinds.
type unit int

const (
	uInput unit = iota
	uCacheRead
	uCacheWrite
	uInputAudio
	uCacheAudioRead
	uOutput
	uOutputAudio
	numUnits
)

// unitInfo describes a priced token kind: its catalog price key, usage key, whether it is on
// the input side, and the units that contain it (its ancestors in genai-prices' unit
// registry: a cache read is an input token; a cached audio token is an input token, a cache
// read and an input audio token).
var unitInfo = [numUnits]struct {
	priceKey  string
	usageKey  string
	input     bool
	ancestors []unit
}{
	uInput:          {"input_mtok", "input_tokens", true, nil},
	uCacheRead:      {"cache_read_mtok", "cache_read_tokens", true, []unit{uInput}},
	uCacheWrite:     {"cache_write_mtok", "cache_write_tokens", true, []unit{uInput}},
	uInputAudio:     {"input_audio_mtok", "input_audio_tokens", true, []unit{uInput}},
	uCacheAudioRead: {"cache_audio_read_mtok", "cache_audio_read_tokens", true, []unit{uInput, uCacheRead, uInputAudio}},
	uOutput:         {"output_mtok", "output_tokens", false, nil},
	uOutputAudio:    {"output_audio_mtok", "output_audio_tokens", false, []unit{uOutput}},
}

// leafOrder lists units so that every unit comes after all the units it contains.
var leafOrder = [numUnits]unit{uCacheAudioRead, uCacheRead, uCacheWrite, uInputAudio, uOutputAudio, uInput, uOutput}

func (u Usage) value(k unit) int64 {
	switch k {
	case uInput:
		return u.InputTokens
	case uCacheRead:
		return u.CacheReadTokens
	case uCacheWrite:
		return u.CacheWriteTokens
	case uInputAudio:
		return u.InputAudioTokens
	case uCacheAudioRead:
		return u.CacheAudioReadTokens
	case uOutput:
		return u.OutputTokens
	case uOutputAudio:
		return u.OutputAudioTokens
	}
	return 0
}

// checkNonNegative reports the first negative field.
func (u Usage) checkNonNegative() error {
	for k := range numUnits {
		if u.value(k) < 0 {
			return fmt.Errorf("%w: %s is negative (%d)", ErrInvalidUsage, unitInfo[k].usageKey, u.value(k))
		}
	}
	if u.ReasoningTokens < 0 {
		return fmt.Errorf("%w: reasoning_tokens is negative (%d)", ErrInvalidUsage, u.ReasoningTokens)
	}
	return nil
}

// Tier is one threshold of a tiered price: when the request's total input tokens are ABOVE
// Start, every token of the priced kind costs Price.
type Tier struct {
	Start int64
	Price Price
}

// Rate is a price that may depend on the request's size (genai-prices "cliff" tiers).
type Rate struct {
	Base  Price
	Tiers []Tier // ascending Start
}

// at returns the price that applies for a request with totalInput input tokens: the price
// of the last tier whose Start is strictly below totalInput, else Base.
func (r *Rate) at(totalInput int64) Price {
	p := r.Base
	for _, t := range r.Tiers {
		if totalInput > t.Start {
			p = t.Price
		}
	}
	return p
}

// maxUpTo returns the largest price that applies to a request of at most totalInput input
// tokens: the base price and every tier whose Start is below totalInput. A reservation's
// input estimate is an upper bound, so the real request's tier is one of these.
func (r *Rate) maxUpTo(totalInput int64) Price {
	p := r.Base
	for _, t := range r.Tiers {
		if totalInput > t.Start {
			p = max(p, t.Price)
		}
	}
	return p
}

// Prices is one set of prices of a model. A nil Rate means the model has no separate price
// for that kind of token (its tokens are then charged with the containing total).
type Prices struct {
	InputMTok          *Rate
	CacheReadMTok      *Rate
	CacheWriteMTok     *Rate
	InputAudioMTok     *Rate
	CacheAudioReadMTok *Rate
	OutputMTok         *Rate
	OutputAudioMTok    *Rate
	// RequestsKCount is a price per thousand requests (nil: none).
	RequestsKCount *Price
}

func (p *Prices) rate(k unit) *Rate {
	switch k {
	case uInput:
		return p.InputMTok
	case uCacheRead:
		return p.CacheReadMTok
	case uCacheWrite:
		return p.CacheWriteMTok
	case uInputAudio:
		return p.InputAudioMTok
	case uCacheAudioRead:
		return p.CacheAudioReadMTok
	case uOutput:
		return p.OutputMTok
	case uOutputAudio:
		return p.OutputAudioMTok
	}
	return nil
}

func (p *Prices) setRate(k unit, r *Rate) {
	switch k {
	case uInput:
		p.InputMTok = r
	case uCacheRead:
		p.CacheReadMTok = r
	case uCacheWrite:
		p.CacheWriteMTok = r
	case uInputAudio:
		p.InputAudioMTok = r
	case uCacheAudioRead:
		p.CacheAudioReadMTok = r
	case uOutput:
		p.OutputMTok = r
	case uOutputAudio:
		p.OutputAudioMTok = r
	}
}

// constraint says when a price set applies.
type constraint struct {
	startDate    time.Time // UTC midnight; zero: none
	hasTimeOfDay bool
	startS, endS int // seconds after UTC midnight, [start, end), wrapping when end < start
}

func (c *constraint) active(t time.Time) bool {
	switch {
	case !c.startDate.IsZero():
		return !t.Before(c.startDate)
	case c.hasTimeOfDay:
		t = t.UTC()
		s := t.Hour()*3600 + t.Minute()*60 + t.Second()
		if c.endS < c.startS {
			return s >= c.startS || s < c.endS
		}
		return s >= c.startS && s < c.endS
	}
	return true
}

// nextBoundary returns the first instant after t at which this constraint may switch
// (ok=false when it never does after t).
func (c *constraint) nextBoundary(t time.Time) (time.Time, bool) {
	switch {
	case !c.startDate.IsZero():
		return c.startDate, c.startDate.After(t)
	case c.hasTimeOfDay:
		t = t.UTC()
		midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		var best time.Time
		for _, s := range []int{c.startS, c.endS} {
			b := midnight.Add(time.Duration(s) * time.Second)
			if !b.After(t) {
				b = b.Add(24 * time.Hour)
			}
			if best.IsZero() || b.Before(best) {
				best = b
			}
		}
		return best, true
	}
	return time.Time{}, false
}

type conditionalPrices struct {
	cons   *constraint // nil: always
	prices *Prices
}

// Model is a priced model of the catalog. It is immutable and safe for concurrent use.
type Model struct {
	// ID is the catalog's model id (e.g. "gpt-4o").
	ID string
	// Provider is the id of the provider whose price list holds the model; for an Azure
	// deployment priced by its OpenAI fallback it is "openai".
	Provider string
	// ContextWindow is the model's maximum input size in tokens (0: unknown).
	ContextWindow int64
	// MaxOutputTokens is the most output tokens one response of the model can have, reasoning
	// included (0: unknown): data/max_output_tokens.json, or the price overrides.
	MaxOutputTokens int64
	// Deprecated marks models the provider deprecated but still serves.
	Deprecated bool

	prices []conditionalPrices // at least one
}

// PricesAt returns the price set in force at t: the last price set whose constraint holds at
// t (a start date is on or before t, in UTC; a daily UTC time-of-day window contains t), else
// the first one — genai-prices' rule. The result is shared and must not be modified.
func (m *Model) PricesAt(t time.Time) *Prices {
	for i := len(m.prices) - 1; i >= 0; i-- {
		cp := m.prices[i]
		if cp.cons == nil || cp.cons.active(t) {
			return cp.prices
		}
	}
	return m.prices[0].prices
}

// Cost prices u with the prices in force now. See CostAt.
func (m *Model) Cost(u Usage) (Cost, error) {
	return m.CostAt(u, time.Now())
}

// CostAt prices u with the prices in force at t (normally the request's start time).
//
// The exact cost is Σ tokens × price over the usage broken into disjoint parts, where each
// priced part is charged at its own price and the rest of its total at the total's price
// (genai-prices' decomposition): with cache_read and input prices, the input side costs
// CacheRead×cache_read + (Input − CacheRead)×input. A tiered price is picked by the
// request's total input tokens (InputTokens): above a tier's start, all tokens of that kind
// pay the tier's price. The per-request price (requests_kcount/1000), if any, is part of
// Input. The total is rounded up once to the next micro; see Cost for the split.
//
// It fails with ErrInvalidUsage when a value is negative or a part exceeds its total (for
// parts the model prices), and with ErrOverflow when the total exceeds math.MaxInt64 micros.
func (m *Model) CostAt(u Usage, t time.Time) (Cost, error) {
	if err := u.checkNonNegative(); err != nil {
		return Cost{}, err
	}
	p := m.PricesAt(t)
	var leaf [numUnits]int64
	var priced [numUnits]bool
	for k := range numUnits {
		priced[k] = p.rate(k) != nil
	}
	for _, k := range leafOrder {
		if !priced[k] {
			continue
		}
		v := u.value(k)
		for _, d := range leafOrder {
			if d == k || !priced[d] || !contains(unitInfo[d].ancestors, k) {
				continue
			}
			v -= leaf[d] // v ≥ 0 and leaves are in [0, 2^63), so this cannot overflow
			if v < 0 {
				return Cost{}, fmt.Errorf("%w: %s (%d) is less than the sum of its separately priced parts",
					ErrInvalidUsage, unitInfo[k].usageKey, u.value(k))
			}
		}
		leaf[k] = v
	}
	var in, out u128
	for k := range numUnits {
		if !priced[k] || leaf[k] == 0 {
			continue
		}
		c := mul64(uint64(leaf[k]), uint64(p.rate(k).at(u.InputTokens)))
		if unitInfo[k].input {
			in = in.add(c)
		} else {
			out = out.add(c)
		}
	}
	if p.RequestsKCount != nil {
		in = in.add(mul64(uint64(*p.RequestsKCount), 1000))
	}
	inMicros, ok := in.ceilDiv(1_000_000_000)
	if !ok {
		return Cost{}, ErrOverflow
	}
	total, ok := in.add(out).ceilDiv(1_000_000_000)
	if !ok {
		return Cost{}, ErrOverflow
	}
	return Cost{Input: inMicros, Output: total - inMicros, Total: total}, nil
}

func contains(us []unit, k unit) bool {
	for _, u := range us {
		if u == k {
			return true
		}
	}
	return false
}

// upperBoundWindow is how far after the reservation UpperBoundAt looks for price changes,
// so that a request that settles later (a long stream, a price list switching at midnight
// or a daily off-peak window ending) is still covered.
const upperBoundWindow = 24 * time.Hour

// UpperBound is UpperBoundAt(inputTokens, outputTokens, time.Now()).
func (m *Model) UpperBound(inputTokens, outputTokens int64) (int64, error) {
	return m.UpperBoundAt(inputTokens, outputTokens, time.Now())
}

// UpperBoundAt returns the worst-case cost in micros of a request with at most inputTokens
// total input tokens and at most outputTokens total output tokens, for a reservation:
//
//   - every input token at the highest input-side price (input, cache read, cache write,
//     input audio), and every output token at the highest output-side price (output, output
//     audio), each over the base price and every tier a request of at most inputTokens input
//     tokens can select (the reservation's input count is an upper-bound estimate, so the
//     real request's tier is at or below the estimate's);
//   - plus the per-request price;
//   - over every price set that can be in force between t and t+24h (a price list switching
//     at midnight, a daily off-peak window ending).
//
// It is ≥ CostAt(u, t') for every Usage u with at most those totals, whatever its cache/audio
// split, and every t' in that window. Negative counts fail with ErrInvalidUsage; a bound above
// math.MaxInt64 micros fails with ErrOverflow.
func (m *Model) UpperBoundAt(inputTokens, outputTokens int64, t time.Time) (int64, error) {
	if inputTokens < 0 || outputTokens < 0 {
		return 0, fmt.Errorf("%w: negative token count (input %d, output %d)", ErrInvalidUsage, inputTokens, outputTokens)
	}
	if len(m.prices) == 1 { // one price set, in force at every instant
		return m.prices[0].prices.upperBound(inputTokens, outputTokens)
	}
	var worst int64
	var buf [8]time.Time
	for _, at := range m.instants(t, buf[:0]) {
		v, err := m.PricesAt(at).upperBound(inputTokens, outputTokens)
		if err != nil {
			return 0, err
		}
		worst = max(worst, v)
	}
	return worst, nil
}

// instants appends to out t and every instant in (t, t+window] at which the model's price
// set may change. Prices are constant between consecutive instants.
func (m *Model) instants(t time.Time, out []time.Time) []time.Time {
	out = append(out, t)
	end := t.Add(upperBoundWindow)
	for _, cp := range m.prices {
		if cp.cons == nil {
			continue
		}
		cur := t
		for {
			b, ok := cp.cons.nextBoundary(cur)
			if !ok || b.After(end) {
				break
			}
			out = append(out, b)
			cur = b
		}
	}
	return out
}

func (p *Prices) upperBound(inputTokens, outputTokens int64) (int64, error) {
	var maxIn, maxOut Price
	for k := range numUnits {
		r := p.rate(k)
		if r == nil {
			continue
		}
		if unitInfo[k].input {
			maxIn = max(maxIn, r.maxUpTo(inputTokens))
		} else {
			maxOut = max(maxOut, r.maxUpTo(inputTokens))
		}
	}
	sum := mul64(uint64(inputTokens), uint64(maxIn)).add(mul64(uint64(outputTokens), uint64(maxOut)))
	if p.RequestsKCount != nil {
		sum = sum.add(mul64(uint64(*p.RequestsKCount), 1000))
	}
	v, ok := sum.ceilDiv(1_000_000_000)
	if !ok {
		return 0, ErrOverflow
	}
	return v, nil
}

// u128 is an unsigned 128-bit integer. Every product of a Price (< 2^50) and a token count
// (< 2^63) is below 2^113, so sums of a handful of them cannot overflow it.
type u128 struct{ hi, lo uint64 }

func mul64(a, b uint64) u128 {
	hi, lo := bits.Mul64(a, b)
	return u128{hi, lo}
}

func (x u128) add(y u128) u128 {
	lo, carry := bits.Add64(x.lo, y.lo, 0)
	hi, _ := bits.Add64(x.hi, y.hi, carry)
	return u128{hi, lo}
}

// ceilDiv returns ⌈x/d⌉ when it fits in an int64.
func (x u128) ceilDiv(d uint64) (int64, bool) {
	if x.hi >= d {
		return 0, false
	}
	q, r := bits.Div64(x.hi, x.lo, d)
	if r != 0 {
		if q == math.MaxUint64 {
			return 0, false
		}
		q++
	}
	if q > math.MaxInt64 {
		return 0, false
	}
	return int64(q), true
}
