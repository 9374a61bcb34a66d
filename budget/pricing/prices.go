package pricing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// pathError is an error at a field path ("prices.input_mtok", "models[2].prices").
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string {
	if e.path == "" {
		return e.err.Error()
	}
	return e.path + ": " + e.err.Error()
}
func (e *pathError) Unwrap() error { return e.err }

// atPath prefixes err with path, merging nested paths: atPath("prices", atPath(".input_mtok",
// e)) reads "prices.input_mtok: ...".
func atPath(path string, err error) error {
	if pe, ok := err.(*pathError); ok {
		switch {
		case pe.path == "":
		case path == "" || strings.HasPrefix(pe.path, ".") || strings.HasPrefix(pe.path, "["):
			path += pe.path
		default:
			path += "." + pe.path
		}
		return &pathError{path: path, err: pe.err}
	}
	return &pathError{path: path, err: err}
}

func parsePriceList(raw json.RawMessage) ([]conditionalPrices, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, atPath("", errors.New("missing"))
	}
	if t[0] != '[' {
		p, err := parseModelPrice(t)
		if err != nil {
			return nil, err
		}
		return []conditionalPrices{{prices: p}}, nil
	}
	var items []struct {
		Constraint json.RawMessage `json:"constraint"`
		Prices     json.RawMessage `json:"prices"`
	}
	if err := strictUnmarshal(t, &items); err != nil {
		return nil, atPath("", fmt.Errorf("must be a price object or a list of conditional prices: %w", err))
	}
	if len(items) == 0 {
		return nil, atPath("", errors.New("empty list"))
	}
	out := make([]conditionalPrices, 0, len(items))
	for i, it := range items {
		var cp conditionalPrices
		if isPresent(it.Constraint) {
			c, err := parseConstraint(it.Constraint)
			if err != nil {
				return nil, atPath(fmt.Sprintf("[%d].constraint", i), err)
			}
			cp.cons = c
		}
		if !isPresent(it.Prices) {
			return nil, atPath(fmt.Sprintf("[%d].prices", i), errors.New("missing"))
		}
		p, err := parseModelPrice(it.Prices)
		if err != nil {
			return nil, atPath(fmt.Sprintf("[%d].prices", i), err)
		}
		cp.prices = p
		out = append(out, cp)
	}
	return out, nil
}

func parseConstraint(raw json.RawMessage) (*constraint, error) {
	var c struct {
		StartDate *string `json:"start_date"`
		StartTime *string `json:"start_time"`
		EndTime   *string `json:"end_time"`
	}
	if err := strictUnmarshal(raw, &c); err != nil {
		return nil, err
	}
	switch {
	case c.StartDate != nil && c.StartTime == nil && c.EndTime == nil:
		t, err := time.ParseInLocation("2006-01-02", *c.StartDate, time.UTC)
		if err != nil {
			return nil, fmt.Errorf("start_date: %w", err)
		}
		return &constraint{startDate: t}, nil
	case c.StartDate == nil && c.StartTime != nil && c.EndTime != nil:
		s, err := parseTimeOfDay(*c.StartTime)
		if err != nil {
			return nil, fmt.Errorf("start_time: %w", err)
		}
		e, err := parseTimeOfDay(*c.EndTime)
		if err != nil {
			return nil, fmt.Errorf("end_time: %w", err)
		}
		return &constraint{hasTimeOfDay: true, startS: s, endS: e}, nil
	}
	return nil, errors.New("want either start_date or start_time and end_time")
}

// parseTimeOfDay parses "16:30:00Z", "16:30:00+08:00", "16:30:00" (UTC) or "16:30" into
// seconds after UTC midnight.
func parseTimeOfDay(s string) (int, error) {
	for _, layout := range []string{"15:04:05Z07:00", "15:04:05", "15:04Z07:00", "15:04"} {
		t, err := time.Parse(layout, s)
		if err != nil {
			continue
		}
		_, off := t.Zone()
		secs := (t.Hour()*3600 + t.Minute()*60 + t.Second() - off) % 86400
		if secs < 0 {
			secs += 86400
		}
		return secs, nil
	}
	return 0, fmt.Errorf("invalid time of day %q", s)
}

// parseModelPrice parses a genai-prices ModelPrice object. Errors carry a ".key" path.
func parseModelPrice(raw json.RawMessage) (*Prices, error) {
	var obj map[string]json.RawMessage
	if err := strictUnmarshal(raw, &obj); err != nil || obj == nil {
		return nil, atPath("", errors.New("must be an object"))
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	p := &Prices{}
	for _, k := range keys {
		v := obj[k]
		if k == "requests_kcount" {
			pr, err := parsePriceValue(v)
			if err != nil {
				return nil, atPath("."+k, err)
			}
			p.RequestsKCount = &pr
			continue
		}
		u, ok := unitForPriceKey(k)
		if !ok {
			return nil, atPath("."+k, errors.New("unsupported price kind"))
		}
		r, err := parseRate(v)
		if err != nil {
			return nil, atPath("."+k, err)
		}
		p.setRate(u, r)
	}
	if len(keys) == 0 {
		// Nothing would be charged: a free model must say so with an explicit 0.
		return nil, atPath("", errors.New("no price given (write 0 for a free kind)"))
	}
	return p, nil
}

func unitForPriceKey(k string) (unit, bool) {
	for u := range numUnits {
		if unitInfo[u].priceKey == k {
			return u, true
		}
	}
	return 0, false
}

// parsePriceValue parses a JSON number (or a string holding one) into a Price.
func parsePriceValue(raw json.RawMessage) (Price, error) {
	t := bytes.TrimSpace(raw)
	if len(t) > 0 && t[0] == '"' {
		var s string
		if err := json.Unmarshal(t, &s); err != nil {
			return 0, errors.New("must be a number")
		}
		return parsePrice(s)
	}
	var n json.Number
	if err := strictUnmarshal(t, &n); err != nil || n == "" {
		return 0, errors.New("must be a number")
	}
	return parsePrice(string(n))
}

func parseRate(raw json.RawMessage) (*Rate, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || t[0] != '{' {
		p, err := parsePriceValue(t)
		if err != nil {
			return nil, err
		}
		return &Rate{Base: p}, nil
	}
	var tp struct {
		Base  json.RawMessage `json:"base"`
		Tiers []struct {
			Start json.RawMessage `json:"start"`
			Price json.RawMessage `json:"price"`
		} `json:"tiers"`
	}
	if err := strictUnmarshal(t, &tp); err != nil {
		return nil, fmt.Errorf("tiered price: %w", err)
	}
	if !isPresent(tp.Base) {
		return nil, atPath("base", errors.New("missing"))
	}
	base, err := parsePriceValue(tp.Base)
	if err != nil {
		return nil, atPath("base", err)
	}
	r := &Rate{Base: base}
	for i, rt := range tp.Tiers {
		var n json.Number
		if err := strictUnmarshal(rt.Start, &n); err != nil {
			return nil, atPath(fmt.Sprintf("tiers[%d].start", i), errors.New("must be an integer"))
		}
		start, err := parseCount(string(n))
		if err != nil {
			return nil, atPath(fmt.Sprintf("tiers[%d].start", i), err)
		}
		if !isPresent(rt.Price) {
			return nil, atPath(fmt.Sprintf("tiers[%d].price", i), errors.New("missing"))
		}
		pr, err := parsePriceValue(rt.Price)
		if err != nil {
			return nil, atPath(fmt.Sprintf("tiers[%d].price", i), err)
		}
		r.Tiers = append(r.Tiers, Tier{Start: start, Price: pr})
	}
	slices.SortStableFunc(r.Tiers, func(a, b Tier) int {
		switch {
		case a.Start < b.Start:
			return -1
		case a.Start > b.Start:
			return 1
		}
		return 0
	})
	for i := 1; i < len(r.Tiers); i++ {
		if r.Tiers[i].Start == r.Tiers[i-1].Start {
			return nil, atPath("tiers", fmt.Errorf("duplicate start %d", r.Tiers[i].Start))
		}
	}
	return r, nil
}
