package pricing

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// The per-model output limits: data/max_output_tokens.json, one entry per catalog model with
// the provider documentation page it comes from. A request that sets no output cap may use
// up to this many tokens, so a reservation must hold them; a request's own cap above it is
// refused by the provider.
//
//go:embed data/max_output_tokens.json
var embeddedLimits []byte

type rawLimits struct {
	Description string     `json:"description"`
	Models      []rawLimit `json:"models"`
}

type rawLimit struct {
	Provider        string `json:"provider"`
	ID              string `json:"id"`
	MaxOutputTokens int64  `json:"max_output_tokens"`
	Source          string `json:"source"`
	Note            string `json:"note,omitempty"`
}

// applyLimits sets MaxOutputTokens on the catalog models the data names. Every entry must
// name a catalog model (provider id and model id exactly), give a positive figure and an
// https source; the catalog's version then covers the data too.
func (c *Catalog) applyLimits(data []byte) error {
	var raw rawLimits
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&raw); err != nil {
		return fmt.Errorf("max output tokens: %w", err)
	}
	seen := make(map[[2]string]bool)
	for i, l := range raw.Models {
		at := fmt.Sprintf("max output tokens: models[%d] (%s/%s)", i, l.Provider, l.ID)
		key := [2]string{l.Provider, strings.ToLower(l.ID)}
		if seen[key] {
			return fmt.Errorf("%s: listed twice", at)
		}
		seen[key] = true
		if l.MaxOutputTokens <= 0 || l.MaxOutputTokens > maxTokenCount {
			return fmt.Errorf("%s: max_output_tokens %d out of range", at, l.MaxOutputTokens)
		}
		if u, err := url.Parse(l.Source); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("%s: source must be an https URL of the provider's documentation", at)
		}
		p := c.providerByExactID(l.Provider)
		if p == nil {
			return fmt.Errorf("%s: no such provider", at)
		}
		found := false
		for _, e := range p.entries {
			if e.id == key[1] {
				e.model.MaxOutputTokens = l.MaxOutputTokens
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s: no such model", at)
		}
	}
	h := sha256.New()
	h.Write(c.sum[:])
	h.Write(data)
	copy(c.sum[:], h.Sum(nil))
	c.version = c.source + "+" + hex.EncodeToString(c.sum[:])[:12]
	return nil
}
