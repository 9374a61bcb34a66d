package pricing

import (
	"strings"
)

// Lookup finds the model a request names. provider is a provider id or name as purser
// resolved it ("openai", "azure", "bedrock", "vertex_ai", ...) and may be empty or unknown;
// model is the model as requested or as the response reports it. Matching is
// case-insensitive. In order:
//
//  1. an operator alias (overrides file) for the model name;
//  2. the provider's models, then its fallback providers' (Azure → OpenAI, Anthropic;
//     Google → Anthropic); with no known provider, the provider whose model_match rule
//     matches the name (gpt-… → openai, claude… → anthropic, gemini… → google, ...);
//  3. a "provider/model" name ("openai/gpt-4o", "anthropic/claude-…") is looked up as
//     "model" in that provider when the whole name is not found;
//  4. the same again without a leading "models/" (Gemini's "models/gemini-2.5-pro");
//  5. the same again without a date suffix ("gpt-4o-2099-01-01", "…-20990101",
//     "…@20990101"), so a new snapshot is priced like its base model.
//
// It returns false when nothing matches; the caller's unknown-model policy then applies
// (never a zero price). Results are cached, so repeated lookups cost a map read.
func (c *Catalog) Lookup(provider, model string) (*Model, bool) {
	k := lookupKey{provider, model}
	if m, ok := c.models.get(k); ok {
		return m, m != nil
	}
	m := c.lookup(provider, model)
	// The cache outlives the request: its key must not share memory with the request's
	// strings (a model cut from the path would keep the whole decoded header block alive).
	c.models.put(lookupKey{strings.Clone(provider), strings.Clone(model)}, m)
	return m, m != nil
}

func (c *Catalog) lookup(providerName, model string) *Model {
	name := strings.ToLower(strings.TrimSpace(model))
	if name == "" {
		return nil
	}
	if m := c.aliases[name]; m != nil {
		return m
	}
	p := c.providerByID(providerName)
	for _, n := range nameVariants(name) {
		if m := c.aliases[n]; m != nil {
			return m
		}
		if m := c.find(p, n); m != nil {
			return m
		}
	}
	return nil
}

// find looks name up in p (or in the provider chosen by model_match when p is nil), then as a
// "provider/model" reference.
func (c *Catalog) find(p *provider, name string) *Model {
	q := p
	if q == nil {
		q = c.providerByModel(name)
	}
	if q != nil {
		if m := q.findWithFallback(name); m != nil {
			return m
		}
	}
	if prefix, rest, ok := strings.Cut(name, "/"); ok && rest != "" {
		if x := c.providerByID(prefix); x != nil {
			if m := x.findWithFallback(rest); m != nil {
				return m
			}
		}
	}
	return nil
}

// findWithFallback searches the provider's models, then (one level only, as genai-prices
// does) each fallback provider's models.
func (p *provider) findWithFallback(name string) *Model {
	if m := p.index.find(name); m != nil {
		return m
	}
	for _, f := range p.fallbacks {
		if m := f.index.find(name); m != nil {
			return m
		}
	}
	return nil
}

// nameVariants returns name, then name without a "models/" prefix, then each of those
// without a date suffix, without duplicates.
func nameVariants(name string) []string {
	out := []string{name}
	add := func(s string) {
		if s == "" {
			return
		}
		for _, o := range out {
			if o == s {
				return
			}
		}
		out = append(out, s)
	}
	if rest, ok := strings.CutPrefix(name, "models/"); ok {
		add(rest)
	}
	for _, n := range out {
		add(stripDateSuffix(n))
	}
	return out
}

// stripDateSuffix removes a trailing snapshot date: "-2024-08-06", "-20240806", "@20240806",
// "@2024-08-06". It returns "" when there is none.
func stripDateSuffix(s string) string {
	isDigits := func(t string) bool {
		if t == "" {
			return false
		}
		for i := 0; i < len(t); i++ {
			if t[i] < '0' || t[i] > '9' {
				return false
			}
		}
		return true
	}
	// -YYYY-MM-DD or @YYYY-MM-DD
	if n := len(s); n > 11 {
		d := s[n-10:]
		if (s[n-11] == '-' || s[n-11] == '@') && d[4] == '-' && d[7] == '-' &&
			isDigits(d[:4]) && isDigits(d[5:7]) && isDigits(d[8:]) && plausibleDate(d[:4], d[5:7], d[8:]) {
			return s[:n-11]
		}
	}
	// -YYYYMMDD or @YYYYMMDD
	if n := len(s); n > 9 {
		d := s[n-8:]
		if (s[n-9] == '-' || s[n-9] == '@') && isDigits(d) && plausibleDate(d[:4], d[4:6], d[6:]) {
			return s[:n-9]
		}
	}
	return ""
}

func plausibleDate(y, m, d string) bool {
	return (y[:2] == "20") && m >= "01" && m <= "12" && d >= "01" && d <= "31"
}
