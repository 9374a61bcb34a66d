package pricing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// clause is a compiled genai-prices match clause. String clauses compare case-insensitively
// (both sides lower-cased, as genai-prices does); a regex is searched (unanchored) in the
// lower-cased text.
type clause struct {
	op   string // equals, starts_with, ends_with, contains, regex, or, and
	s    string // lower-cased operand
	re   *regexp.Regexp
	subs []*clause
}

// match reports whether the lower-cased text matches.
func (c *clause) match(lower string) bool {
	switch c.op {
	case "equals":
		return lower == c.s
	case "starts_with":
		return strings.HasPrefix(lower, c.s)
	case "ends_with":
		return strings.HasSuffix(lower, c.s)
	case "contains":
		return strings.Contains(lower, c.s)
	case "regex":
		return c.re.MatchString(lower)
	case "or":
		for _, s := range c.subs {
			if s.match(lower) {
				return true
			}
		}
		return false
	case "and":
		for _, s := range c.subs {
			if !s.match(lower) {
				return false
			}
		}
		return true
	}
	return false
}

// maxClauseDepth bounds nesting of or/and clauses.
const maxClauseDepth = 16

// parseClause compiles a clause from its JSON text: an object with exactly one key.
func parseClause(raw json.RawMessage) (*clause, error) {
	return parseClauseDepth(raw, 0)
}

func parseClauseDepth(raw json.RawMessage, depth int) (*clause, error) {
	if depth > maxClauseDepth {
		return nil, errors.New("match clauses nested too deeply")
	}
	var obj map[string]json.RawMessage
	if err := strictUnmarshal(raw, &obj); err != nil || obj == nil {
		return nil, errors.New("match clause must be an object")
	}
	if len(obj) != 1 {
		return nil, fmt.Errorf("match clause must have exactly one key, has %d", len(obj))
	}
	var op string
	var v json.RawMessage
	for k, val := range obj {
		op, v = k, val
	}
	return compileClause(op, v, depth)
}

func compileClause(op string, v json.RawMessage, depth int) (*clause, error) {
	switch op {
	case "equals", "starts_with", "ends_with", "contains", "regex":
		var s string
		if err := strictUnmarshal(v, &s); err != nil {
			return nil, fmt.Errorf("%s: must be a string", op)
		}
		c := &clause{op: op, s: strings.ToLower(s)}
		if op == "regex" {
			re, err := regexp.Compile(s)
			if err != nil {
				return nil, fmt.Errorf("regex: %w", err)
			}
			c.re, c.s = re, s
		}
		return c, nil
	case "or", "and":
		var items []json.RawMessage
		if err := strictUnmarshal(v, &items); err != nil {
			return nil, fmt.Errorf("%s: must be a list of clauses", op)
		}
		if len(items) == 0 {
			return nil, fmt.Errorf("%s: must not be empty", op)
		}
		c := &clause{op: op}
		for i, it := range items {
			sub, err := parseClauseDepth(it, depth+1)
			if err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", op, i, err)
			}
			c.subs = append(c.subs, sub)
		}
		return c, nil
	}
	return nil, fmt.Errorf("unknown match clause %q", op)
}

func strictUnmarshal(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	d.DisallowUnknownFields()
	return d.Decode(v)
}

// splitEquals splits a model's clause into the literal names it matches by equality (through
// nested "or" only) and a residual clause for everything else (nil when there is none).
func splitEquals(c *clause) (names []string, residual *clause) {
	switch c.op {
	case "equals":
		return []string{c.s}, nil
	case "or":
		var rest []*clause
		for _, s := range c.subs {
			n, r := splitEquals(s)
			names = append(names, n...)
			if r != nil {
				rest = append(rest, r)
			}
		}
		switch len(rest) {
		case 0:
			return names, nil
		case 1:
			return names, rest[0]
		}
		return names, &clause{op: "or", subs: rest}
	}
	return nil, c
}

// modelIndex finds the first model of a list whose clause matches, like a linear scan, but
// resolves plain equality through a map: only models with non-equality clauses placed before
// the equality hit are evaluated.
type modelIndex struct {
	models  []*modelEntry
	equals  map[string]int // lower-cased name -> smallest index of a model matching it by equality
	complex []residual     // models with a non-equality clause, by ascending index
}

type residual struct {
	i     int
	match *clause
}

// modelEntry is a model with its match rule. Entries are immutable once built and may be
// shared between catalogs.
type modelEntry struct {
	model *Model
	match *clause
	id    string // lower-cased model id
}

func newModelIndex(models []*modelEntry) *modelIndex {
	ix := &modelIndex{models: models, equals: make(map[string]int)}
	for i, e := range models {
		names, rest := splitEquals(e.match)
		for _, n := range names {
			if _, ok := ix.equals[n]; !ok {
				ix.equals[n] = i
			}
		}
		if rest != nil {
			ix.complex = append(ix.complex, residual{i, rest})
		}
	}
	return ix
}

func (ix *modelIndex) find(lower string) *Model {
	best, ok := ix.equals[lower]
	if !ok {
		best = len(ix.models)
	}
	for _, r := range ix.complex {
		if r.i >= best {
			break
		}
		if r.match.match(lower) {
			return ix.models[r.i].model
		}
	}
	if ok {
		return ix.models[best].model
	}
	return nil
}
