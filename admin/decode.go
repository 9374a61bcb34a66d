package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

// opt is a request field that may be absent, null or set.
type opt[T any] struct {
	Set  bool // present in the body (possibly null)
	Null bool
	V    T
}

// field binds a JSON member name to its destination and says what it must be, for errors.
type field struct {
	name string
	dst  interface {
		decode(raw json.RawMessage) error
	}
	want     string // "a string", "an array of strings", ...
	nullable bool   // null means "clear" (PATCH); otherwise null is rejected
}

func (o *opt[T]) decode(raw json.RawMessage) error {
	o.Set = true
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		o.Null = true
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(&o.V)
}

// decodeBody reads a JSON object whose members must all be among fields, into them. An empty
// body is an empty object when optional is set.
func decodeBody(r *http.Request, optional bool, fields ...field) error {
	if r.Body == nil {
		return requireBody(optional)
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return err
		}
		return invalid("", "cannot read the request body")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return requireBody(optional)
	}
	if err := strictJSON(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var members map[string]json.RawMessage
	if err := dec.Decode(&members); err != nil || members == nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return invalid("", "request body is not valid JSON (at byte %d): %s", syn.Offset, syn.Error())
		}
		return invalid("", "request body must be a JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "request body must hold a single JSON object")
	}
	byName := make(map[string]field, len(fields))
	for _, f := range fields {
		byName[f.name] = f
	}
	// Report problems in a stable order: unknown members first, then fields in declared order.
	names := make([]string, 0, len(members))
	for name := range members {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, ok := byName[name]; !ok {
			return invalid(name, "unknown field")
		}
	}
	for _, f := range fields {
		raw, ok := members[f.name]
		if !ok {
			continue
		}
		if err := f.dst.decode(raw); err != nil {
			return invalid(f.name, "must be %s", f.want)
		}
		if !f.nullable && bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return invalid(f.name, "must not be null")
		}
	}
	return nil
}

// strictJSON rejects what encoding/json lets through: an object key given twice (encoding/json
// keeps the last, so two readers of one body could disagree) and a control character (U+0000
// to U+001F, U+007F to U+009F; in JSON they arrive as \u escapes) in any key or string value,
// which no admin field needs and Postgres refuses in text (NUL). The error names the member
// ("name", "warn_at[1]", "filter.models[0]"). A syntax error is left to the decoder, which
// reports its offset.
func strictJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	err := strictValue(dec, "", 0)
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	return nil
}

// maxStrictDepth bounds the nesting strictValue follows (admin bodies are two levels deep).
const maxStrictDepth = 64

func strictValue(dec *json.Decoder, path string, depth int) error {
	if depth > maxStrictDepth {
		return invalid(rootField(path), "nested deeper than %d levels", maxStrictDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case string:
		if r, ok := controlChar(v); ok {
			return invalid(path, "contains the control character %U", r)
		}
	case json.Delim:
		switch v {
		case '{':
			seen := make(map[string]bool)
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				key, _ := kt.(string)
				at := key
				if path != "" {
					at = path + "." + key
				}
				if r, ok := controlChar(key); ok {
					return invalid(path, "a member name contains the control character %U", r)
				}
				if seen[key] {
					return invalid(at, "duplicate key %q", key)
				}
				seen[key] = true
				if err := strictValue(dec, at, depth+1); err != nil {
					return err
				}
			}
		case '[':
			for i := 0; dec.More(); i++ {
				if err := strictValue(dec, fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
					return err
				}
			}
		}
		if v == '{' || v == '[' {
			if _, err := dec.Token(); err != nil { // the closing delimiter
				return err
			}
		}
	}
	return nil
}

// rootField is the top-level member of a path ("filter" for "filter.models[0]").
func rootField(path string) string {
	if i := strings.IndexAny(path, ".["); i >= 0 {
		return path[:i]
	}
	return path
}

// controlChar returns the first control character (Unicode Cc) in s.
func controlChar(s string) (rune, bool) {
	for _, r := range s {
		if unicode.IsControl(r) {
			return r, true
		}
	}
	return 0, false
}

// checkRequestText refuses control characters in the path value "id" and in query
// parameters (decoded), as strictJSON does in bodies: they name nothing purser stores, and
// would otherwise reach Postgres (which refuses NUL in text) as a 500.
func checkRequestText(r *http.Request) error {
	if ch, ok := controlChar(r.PathValue("id")); ok {
		return invalid("id", "contains the control character %U", ch)
	}
	q := r.URL.Query()
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if ch, ok := controlChar(name); ok {
			return invalid("", "a query parameter name contains the control character %U", ch)
		}
		for _, v := range q[name] {
			if ch, ok := controlChar(v); ok {
				return invalid(name, "contains the control character %U", ch)
			}
		}
	}
	return nil
}

func requireBody(optional bool) error {
	if optional {
		return nil
	}
	return invalid("", "request body must be a JSON object")
}

// Amounts.

// FormatAmount writes an amount as the admin API does, in its unit: USD with six decimals,
// tokens as a whole number.
func FormatAmount(unit budget.Unit, v int64) string { return unit.Format(v) }

// ParseAmount reads an amount as the admin API takes it: a decimal string in unit.
func ParseAmount(unit budget.Unit, s string) (int64, error) {
	if unit == budget.Tokens || unit == budget.Requests {
		if s == "" || strings.TrimLeft(s, "0123456789") != "" {
			return 0, fmt.Errorf("want a whole number of %s such as \"150000\", got %q", unit, s)
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is out of range", s)
		}
		return v, nil
	}
	return pricing.ParseMicros(s)
}

// parseUnit validates a unit name ("" is usd).
func parseUnit(s string) (budget.Unit, error) {
	u, err := budget.ParseUnit(s)
	if err != nil {
		return "", invalid("unit", "%s", err)
	}
	return u, nil
}

// Query parameters.

func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < lo || v > hi {
		return 0, invalid(name, "must be an integer from %d to %d, got %q", lo, hi, s)
	}
	return v, nil
}

// querySubject reads an optional "subject" filter, which must be a valid subject.
func querySubject(r *http.Request) (string, error) {
	subject := r.URL.Query().Get("subject")
	if subject != "" {
		if _, err := budget.ParseSubject(subject); err != nil {
			return "", invalid("subject", "%s", err)
		}
	}
	return subject, nil
}

// nextPage trims a list fetched with limit+1 rows to limit and returns the cursor of the
// next page: cursor(last row kept), or nil when there is none.
func nextPage[T any](items []T, limit int, cursor func(T) any) ([]T, any) {
	if len(items) <= limit {
		return items, nil
	}
	items = items[:limit]
	return items, cursor(items[limit-1])
}

func pathID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 {
		return 0, invalid("id", "must be a positive integer, got %q", s)
	}
	return v, nil
}

// parseTimeParam reads an RFC 3339 time or a date (YYYY-MM-DD, UTC midnight). A date used as
// an end (inclusive) means the end of that day.
func parseTimeParam(name, s string, end bool) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, invalid(name, "must be an RFC 3339 time (2026-09-01T00:00:00Z) or a date (2026-09-01), got %q", s)
	}
	if end {
		d = d.AddDate(0, 0, 1)
	}
	return d, nil
}
