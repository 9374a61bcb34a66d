package pricing

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// maxOverridesSize bounds an overrides file.
const maxOverridesSize = 16 << 20

// Load returns a new catalog: base with the operator overrides read from r applied. base is
// not modified. The overrides file is YAML or JSON, decoded strictly (unknown fields and
// duplicate keys are errors):
//
//	models:                      # add or override model prices
//	  - provider: openai         # provider id or name (resolved like Lookup); a new id adds a provider
//	    id: gpt-4o               # an existing id of that provider keeps its match rule and position
//	    match: {starts_with: gpt-4o-}   # optional genai-prices clause; default {equals: <id>}
//	    context_window: 128000   # optional
//	    max_output_tokens: 16384 # optional: the most output tokens one response can have
//	    prices:                  # genai-prices price fields, USD per million tokens; optional
//	                             # for an existing model (its prices are kept)
//	      input_mtok: 2.5        # numbers or decimal strings, at most 9 decimal places
//	      cache_read_mtok: 1.25
//	      output_mtok: {base: 10, tiers: [{start: 200000, price: 15}]}
//	      requests_kcount: 0.5   # USD per thousand requests
//	aliases:                     # model names as requested -> provider/model
//	  prod-gpt4o: azure/gpt-4o
//	default_price:               # price of unknown models for the "charge a default price" policy
//	  input_mtok: 10
//	  output_mtok: 30
//
// A new model is placed before the provider's catalog models, so its rule wins. Errors name
// the field ("models[2].prices.input_mtok: must be >= 0") or the YAML line; the caller adds
// the file name. YAML numbers pass through a float64,
// so write prices with more than 15 significant digits as strings ("0.123456789").
func Load(base *Catalog, r io.Reader) (*Catalog, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxOverridesSize+1))
	if err != nil {
		return nil, fmt.Errorf("read price overrides: %w", err)
	}
	if len(data) > maxOverridesSize {
		return nil, fmt.Errorf("larger than %d bytes", maxOverridesSize)
	}
	return applyOverrides(base, data)
}

type overrideModel struct {
	Provider      string          `json:"provider"`
	ID            string          `json:"id"`
	Match         json.RawMessage `json:"match"`
	ContextWindow json.RawMessage `json:"context_window"`
	MaxOutput     json.RawMessage `json:"max_output_tokens"`
	Prices        json.RawMessage `json:"prices"`
}

func applyOverrides(base *Catalog, data []byte) (*Catalog, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := decodeFields(js, &top, "models", "aliases", "default_price"); err != nil {
		return nil, err
	}

	c := &Catalog{
		aliases: make(map[string]*Model),
		aliasTo: make(map[string]string),
		dflt:    base.dflt,
		skipped: base.skipped,
		source:  base.source,
	}
	for k, v := range base.aliasTo {
		c.aliasTo[k] = v
	}
	for _, p := range base.providers {
		cp := *p
		cp.entries = slices.Clone(p.entries)
		c.providers = append(c.providers, &cp)
	}

	if raw, ok := top["models"]; ok && isPresent(raw) {
		var items []json.RawMessage
		if err := strictUnmarshal(raw, &items); err != nil {
			return nil, atPath("models", errors.New("must be a list"))
		}
		added := make(map[*provider][]*modelEntry)
		seen := make(map[[2]string]bool)
		for i, it := range items {
			at := fmt.Sprintf("models[%d]", i)
			var fields map[string]json.RawMessage
			if err := decodeFields(it, &fields, "provider", "id", "match", "context_window", "max_output_tokens", "prices"); err != nil {
				return nil, atPath(at, err)
			}
			var om overrideModel
			if err := strictUnmarshal(it, &om); err != nil {
				return nil, atPath(at, fmt.Errorf("provider and id must be strings: %w", err))
			}
			if err := c.applyModel(om, added, seen); err != nil {
				return nil, atPath(at, err)
			}
		}
		for p, es := range added {
			p.entries = append(es, p.entries...)
		}
	}
	c.link()

	if raw, ok := top["default_price"]; ok && isPresent(raw) {
		p, err := parseModelPrice(raw)
		if err != nil {
			return nil, atPath("default_price", err)
		}
		c.dflt = &Model{ID: "default", prices: []conditionalPrices{{prices: p}}}
	}

	if raw, ok := top["aliases"]; ok && isPresent(raw) {
		var al map[string]string
		if err := strictUnmarshal(raw, &al); err != nil {
			return nil, atPath("aliases", errors.New("must map names to \"provider/model\" strings"))
		}
		names := make([]string, 0, len(al))
		for k := range al {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, name := range names {
			at := fmt.Sprintf("aliases[%q]", name)
			key := strings.ToLower(strings.TrimSpace(name))
			if key == "" {
				return nil, atPath(at, errors.New("empty alias"))
			}
			if _, err := c.resolveTarget(al[name]); err != nil {
				return nil, atPath(at, err)
			}
			c.aliasTo[key] = al[name]
		}
	}
	// Resolve every alias, earlier ones included, against this catalog's models, so that an
	// alias follows a later price override of its target.
	for key, target := range c.aliasTo {
		m, err := c.resolveTarget(target)
		if err != nil {
			return nil, atPath(fmt.Sprintf("aliases[%q] (from an earlier overrides file)", key), err)
		}
		c.aliases[key] = m
	}

	var canon bytes.Buffer
	if err := json.Compact(&canon, js); err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(base.sum[:])
	h.Write(canon.Bytes())
	copy(c.sum[:], h.Sum(nil))
	c.version = c.source + "+" + hex.EncodeToString(c.sum[:])[:12]
	return c, nil
}

func (c *Catalog) applyModel(om overrideModel, added map[*provider][]*modelEntry, seen map[[2]string]bool) error {
	pname := strings.ToLower(strings.TrimSpace(om.Provider))
	if pname == "" {
		return atPath("provider", errors.New("missing"))
	}
	id := strings.TrimSpace(om.ID)
	if id == "" {
		return atPath("id", errors.New("missing"))
	}
	p := c.providerByID(pname)
	if p == nil {
		if strings.ContainsAny(pname, "/ \t") {
			return atPath("provider", fmt.Errorf("invalid provider id %q", om.Provider))
		}
		p = &provider{id: pname, name: pname, extractors: map[string]*extractor{}}
		c.providers = append(c.providers, p)
	}
	key := [2]string{p.id, strings.ToLower(id)}
	if seen[key] {
		return atPath("id", fmt.Errorf("duplicate model %s/%s", p.id, id))
	}
	seen[key] = true
	existing := -1
	for i, e := range p.entries {
		if e.id == key[1] {
			existing = i
			break
		}
	}
	m := &Model{ID: id, Provider: p.id}
	switch {
	case isPresent(om.Prices):
		prices, err := parseModelPrice(om.Prices)
		if err != nil {
			return atPath("prices", err)
		}
		m.prices = []conditionalPrices{{prices: prices}}
	case existing >= 0:
		m.prices = p.entries[existing].model.prices // a limit-only override keeps the prices
	default:
		return atPath("prices", errors.New("missing (required for a model the catalog does not have)"))
	}
	var match *clause
	if isPresent(om.Match) {
		var err error
		if match, err = parseClause(om.Match); err != nil {
			return atPath("match", err)
		}
	}
	var err error
	if m.ContextWindow, err = overrideCount(om.ContextWindow); err != nil {
		return atPath("context_window", err)
	}
	if m.MaxOutputTokens, err = overrideCount(om.MaxOutput); err != nil {
		return atPath("max_output_tokens", err)
	}
	if existing >= 0 {
		e := p.entries[existing]
		if match == nil {
			match = e.match
		}
		if m.ContextWindow == 0 {
			m.ContextWindow = e.model.ContextWindow
		}
		if m.MaxOutputTokens == 0 {
			m.MaxOutputTokens = e.model.MaxOutputTokens
		}
		m.ID, m.Deprecated = e.model.ID, e.model.Deprecated
		p.entries[existing] = &modelEntry{model: m, match: match, id: e.id}
		return nil
	}
	if match == nil {
		match = &clause{op: "equals", s: key[1]}
	}
	added[p] = append(added[p], &modelEntry{model: m, match: match, id: key[1]})
	return nil
}

// overrideCount reads an optional token count of the overrides file (0 when absent).
func overrideCount(raw json.RawMessage) (int64, error) {
	if !isPresent(raw) {
		return 0, nil
	}
	var n json.Number
	if err := strictUnmarshal(raw, &n); err != nil {
		return 0, errors.New("must be an integer")
	}
	v, err := parseCount(string(n))
	if err == nil && v == 0 {
		err = errors.New("must be positive")
	}
	return v, err
}

// resolveTarget resolves an alias target "provider/model".
func (c *Catalog) resolveTarget(target string) (*Model, error) {
	pname, mname, ok := strings.Cut(strings.TrimSpace(target), "/")
	if !ok || pname == "" || mname == "" {
		return nil, fmt.Errorf("target %q: want \"provider/model\"", target)
	}
	p := c.providerByID(pname)
	if p == nil {
		return nil, fmt.Errorf("target %q: unknown provider %q", target, pname)
	}
	m := p.findWithFallback(strings.ToLower(mname))
	if m == nil {
		return nil, fmt.Errorf("target %q: no such model in provider %s", target, p.id)
	}
	return m, nil
}

// decodeFields decodes a JSON object into a map of raw fields, rejecting any key not listed.
func decodeFields(js []byte, dst *map[string]json.RawMessage, allowed ...string) error {
	t := bytes.TrimSpace(js)
	if bytes.Equal(t, []byte("null")) {
		*dst = map[string]json.RawMessage{}
		return nil
	}
	if err := strictUnmarshal(t, dst); err != nil || *dst == nil {
		return errors.New("must be an object")
	}
	keys := make([]string, 0, len(*dst))
	for k := range *dst {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("unknown field %q (allowed: %s)", k, strings.Join(allowed, ", "))
		}
	}
	return nil
}
