package pricing

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
)

//go:embed data/genai-prices-data_slim.json
var embeddedData []byte

// embeddedSource names the upstream data embedded in the binary: pydantic/genai-prices at
// commit 47df840a (2026-08-21), file prices/data_slim.json.
const embeddedSource = "genai-prices@47df840a"

// Catalog is an immutable price catalog: providers, their models and prices, usage
// extractors, operator aliases and the default price. It is safe for concurrent use; its
// only mutable state is an internal, bounded lookup cache.
type Catalog struct {
	source    string // upstream data name, e.g. "genai-prices@47df840a"
	version   string
	sum       [32]byte // hash of the effective data; chained by overrides
	providers []*provider
	aliases   map[string]*Model // lower-cased alias -> model
	aliasTo   map[string]string // lower-cased alias -> "provider/model" target, re-resolved by Load
	dflt      *Model
	skipped   []string

	models hotCache[lookupKey, *Model]
	hosts  hotCache[string, string]
}

type provider struct {
	id            string
	name          string
	apiPattern    *regexp.Regexp // anchored at the start, as Python's re.match
	modelMatch    *clause
	providerMatch *clause
	extractors    map[string]*extractor // by api_flavor
	fallbackIDs   []string
	fallbacks     []*provider
	entries       []*modelEntry
	index         *modelIndex
}

type lookupKey struct{ provider, model string }

// Embedded parses the price catalog compiled into the binary (genai-prices, MIT licence) with
// purser's table of maximum output tokens (data/max_output_tokens.json). Call it once at
// start and share the result: each call parses the data again.
func Embedded() (*Catalog, error) {
	c, err := ParseCatalog(embeddedData, embeddedSource)
	if err != nil {
		return nil, err
	}
	if err := c.applyLimits(embeddedLimits); err != nil {
		return nil, err
	}
	return c, nil
}

// ParseCatalog parses a catalog in the genai-prices "slim" JSON format. source names the
// data in the catalog's Version ("genai-prices@47df840a").
//
// Model entries that purser cannot price exactly (a price with more than 9 decimal places,
// an unsupported price kind such as image tokens, a malformed constraint) are left out and
// listed by Skipped; so are extractors and API patterns that do not compile. The data as a
// whole must be valid JSON of the right shape.
func ParseCatalog(data []byte, source string) (*Catalog, error) {
	var raws []rawProvider
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&raws); err != nil {
		return nil, fmt.Errorf("parse catalog %s: %w", source, err)
	}
	c := &Catalog{source: source, sum: sha256.Sum256(data)}
	c.version = source + "+" + hex.EncodeToString(c.sum[:])[:12]
	seen := make(map[string]bool)
	for i, rp := range raws {
		if rp.ID == "" {
			return nil, fmt.Errorf("parse catalog %s: providers[%d]: missing id", source, i)
		}
		if seen[rp.ID] {
			return nil, fmt.Errorf("parse catalog %s: providers[%d]: duplicate provider id %q", source, i, rp.ID)
		}
		seen[rp.ID] = true
		p, skipped := parseProvider(rp)
		c.providers = append(c.providers, p)
		c.skipped = append(c.skipped, skipped...)
	}
	c.link()
	return c, nil
}

// link resolves fallback providers and (re)builds model indexes. It must run before the
// catalog is shared.
func (c *Catalog) link() {
	for _, p := range c.providers {
		p.fallbacks = p.fallbacks[:0:0]
		for _, id := range p.fallbackIDs {
			if f := c.providerByExactID(id); f != nil && f != p {
				p.fallbacks = append(p.fallbacks, f)
			}
		}
		p.index = newModelIndex(p.entries)
	}
}

// Version identifies the effective price data ("genai-prices@47df840a+3f2a9c1b7e4d": the
// upstream source, then a SHA-256 prefix of the data and of any overrides applied). Record it
// with every settlement.
func (c *Catalog) Version() string { return c.version }

// Skipped lists the catalog entries left out because they cannot be priced exactly, each as
// "provider/model: reason".
func (c *Catalog) Skipped() []string { return slices.Clone(c.skipped) }

// Providers returns the provider ids in catalog order.
func (c *Catalog) Providers() []string {
	ids := make([]string, len(c.providers))
	for i, p := range c.providers {
		ids[i] = p.id
	}
	return ids
}

// DefaultModel returns the operator's default price for unknown models (overrides file
// "default_price"), for callers whose unknown-model policy is "charge a default price".
func (c *Catalog) DefaultModel() (*Model, bool) { return c.dflt, c.dflt != nil }

// ProviderForHost returns the id of the first provider whose API URL pattern matches host
// ("api.openai.com", "myres.openai.azure.com:443", or a full URL such as
// "https://bedrock-runtime.us-east-1.amazonaws.com/model/x"), or "" when none does.
func (c *Catalog) ProviderForHost(host string) string {
	if v, ok := c.hosts.get(host); ok {
		return v
	}
	id := c.providerForHost(host)
	c.hosts.put(strings.Clone(host), id) // owned by the cache, not a view of the request
	return id
}

func (c *Catalog) providerForHost(host string) string {
	url := strings.ToLower(strings.TrimSpace(host))
	if url == "" {
		return ""
	}
	if !strings.Contains(url, "://") {
		if h, _, err := net.SplitHostPort(url); err == nil {
			url = h
		}
		url = "https://" + url
	}
	for _, p := range c.providers {
		if p.apiPattern != nil && p.apiPattern.MatchString(url) {
			return p.id
		}
	}
	return ""
}

func (c *Catalog) providerByExactID(id string) *provider {
	for _, p := range c.providers {
		if p.id == id {
			return p
		}
	}
	return nil
}

// providerByID resolves a provider name as genai-prices does: exact id first, then the
// providers' provider_match rules, on the trimmed lower-cased name.
func (c *Catalog) providerByID(name string) *provider {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" {
		return nil
	}
	if p := c.providerByExactID(n); p != nil {
		return p
	}
	for _, p := range c.providers {
		if p.providerMatch != nil && p.providerMatch.match(n) {
			return p
		}
	}
	return nil
}

// providerByModel returns the first provider whose model_match matches the lower-cased model.
func (c *Catalog) providerByModel(lower string) *provider {
	for _, p := range c.providers {
		if p.modelMatch != nil && p.modelMatch.match(lower) {
			return p
		}
	}
	return nil
}

// --- raw JSON shapes ---

type rawProvider struct {
	ID                     string            `json:"id"`
	Name                   string            `json:"name"`
	APIPattern             string            `json:"api_pattern"`
	ModelMatch             json.RawMessage   `json:"model_match"`
	ProviderMatch          json.RawMessage   `json:"provider_match"`
	Extractors             []json.RawMessage `json:"extractors"`
	FallbackModelProviders []string          `json:"fallback_model_providers"`
	Models                 []rawModel        `json:"models"`
}

type rawModel struct {
	ID            string          `json:"id"`
	Match         json.RawMessage `json:"match"`
	ContextWindow json.Number     `json:"context_window"`
	Prices        json.RawMessage `json:"prices"`
	Deprecated    bool            `json:"deprecated"`
}

func parseProvider(rp rawProvider) (*provider, []string) {
	var skipped []string
	skip := func(what string, err error) {
		skipped = append(skipped, fmt.Sprintf("%s%s: %v", rp.ID, what, err))
	}
	p := &provider{
		id:          rp.ID,
		name:        rp.Name,
		extractors:  make(map[string]*extractor),
		fallbackIDs: rp.FallbackModelProviders,
	}
	if rp.APIPattern != "" {
		re, err := regexp.Compile("^(?:" + rp.APIPattern + ")")
		if err != nil {
			skip(" api_pattern", err)
		} else {
			p.apiPattern = re
		}
	}
	optionalClause := func(raw json.RawMessage, what string) *clause {
		if !isPresent(raw) {
			return nil
		}
		cl, err := parseClause(raw)
		if err != nil {
			skip(what, err)
		}
		return cl // nil on error
	}
	p.modelMatch = optionalClause(rp.ModelMatch, " model_match")
	p.providerMatch = optionalClause(rp.ProviderMatch, " provider_match")
	for i, raw := range rp.Extractors {
		ex, err := parseExtractor(raw)
		if err != nil {
			skip(fmt.Sprintf(" extractors[%d]", i), err)
			continue
		}
		if _, dup := p.extractors[ex.flavor]; !dup {
			p.extractors[ex.flavor] = ex
		}
	}
	for _, rm := range rp.Models {
		e, err := parseModel(rp.ID, rm)
		if err != nil {
			skip("/"+rm.ID, err)
			continue
		}
		p.entries = append(p.entries, e)
	}
	return p, skipped
}

func isPresent(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null"))
}

func parseModel(providerID string, rm rawModel) (*modelEntry, error) {
	if rm.ID == "" {
		return nil, errors.New("missing id")
	}
	if !isPresent(rm.Match) {
		return nil, errors.New("missing match")
	}
	cl, err := parseClause(rm.Match)
	if err != nil {
		return nil, fmt.Errorf("match: %w", err)
	}
	m := &Model{ID: rm.ID, Provider: providerID, Deprecated: rm.Deprecated}
	if rm.ContextWindow != "" {
		n, err := parseCount(string(rm.ContextWindow))
		if err != nil {
			return nil, fmt.Errorf("context_window: %w", err)
		}
		m.ContextWindow = n
	}
	if m.prices, err = parsePriceList(rm.Prices); err != nil {
		return nil, atPath("prices", err)
	}
	return &modelEntry{model: m, match: cl, id: strings.ToLower(rm.ID)}, nil
}
