package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// DetailsText writes an audit entry's details for people: key=value pairs in key order,
// amounts in their unit ($1.50, 1000 tokens) instead of the stored micro-units. unitOf gives
// the unit of the budget an entry names when the details do not carry it (a grant records its
// amount, not the budget's unit); it may be nil, and may return "" when the budget is gone.
// Details that are not a JSON object are returned as they are.
func (e AuditEntry) DetailsText(unitOf func(target string) string) string {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(e.Details))
	dec.UseNumber()
	if dec.Decode(&m) != nil || m == nil {
		return string(e.Details)
	}
	unit, _ := m["unit"].(string)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(m))
	for _, k := range keys {
		var s string
		switch x := m[k].(type) {
		case string:
			s = x
			if s == "" || strings.ContainsAny(s, " \t\"=") {
				s = strconv.Quote(s)
			}
		case json.Number:
			s = x.String()
			if k == "limit" || k == "amount" {
				if unit == "" && unitOf != nil {
					unit = unitOf(e.Target)
				}
				s = amountText(unit, x)
			}
		default:
			b, _ := json.Marshal(x)
			s = string(b)
		}
		parts = append(parts, k+"="+s)
	}
	return strings.Join(parts, " ")
}

// amountText writes a stored amount (micro-units for money) in its unit.
func amountText(unit string, n json.Number) string {
	v, err := n.Int64()
	if err != nil {
		return n.String()
	}
	switch unit {
	case "usd":
		return FormatUSD(v)
	case "tokens", "requests":
		return n.String() + " " + unit
	}
	return n.String() + " (micro-units of the budget's unit)"
}

// FormatUSD writes micro-USD as dollars with at least two decimals: $1.50, $0.00036, -$2.00.
func FormatUSD(micros int64) string {
	sign := ""
	u := uint64(micros)
	if micros < 0 {
		sign, u = "-", uint64(-micros)
	}
	frac := strings.TrimRight(fmt.Sprintf("%06d", u%1_000_000), "0")
	for len(frac) < 2 {
		frac += "0"
	}
	return fmt.Sprintf("%s$%d.%s", sign, u/1_000_000, frac)
}
