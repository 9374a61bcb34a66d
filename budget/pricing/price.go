package pricing

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrUnknownModel: neither the response's model nor the requested one is in the catalog.
var ErrUnknownModel = errors.New("unknown model")

// Priced is the result of pricing one response.
type Priced struct {
	Model *Model // the catalog model that priced the usage
	Usage Usage  // the normalised usage
	Cost  Cost   // its cost in micros
	// BodyModel is the model the response reported ("" when it had none).
	BodyModel string
}

// PriceResponse is the one code path that turns a provider response into money: settlement
// and `purser cost` both use it. It extracts the usage (ExtractUsage with provider and
// flavor), picks the model, and prices the usage with the prices in force at at.
//
// The model is, in order: model when it is an operator alias (the operator's word wins), the
// model the response reports (what the provider actually ran and bills, e.g. the real model
// behind an Azure deployment or a router), then model (as requested). Errors wrap
// ErrNoUsage, ErrIncompleteUsage, ErrInvalidUsage, ErrUnknownFlavor, ErrUnknownModel or
// ErrOverflow so that callers can apply their policies.
func (c *Catalog) PriceResponse(provider, flavor, model string, body map[string]any, at time.Time) (Priced, error) {
	u, bodyModel, err := c.ExtractUsage(provider, flavor, body)
	if err != nil {
		return Priced{BodyModel: bodyModel}, err
	}
	m, err := c.pickModel(provider, model, bodyModel)
	if err != nil {
		return Priced{Usage: u, BodyModel: bodyModel}, err
	}
	cost, err := m.CostAt(u, at)
	if err != nil {
		return Priced{Model: m, Usage: u, BodyModel: bodyModel}, fmt.Errorf("price %s/%s: %w", m.Provider, m.ID, err)
	}
	return Priced{Model: m, Usage: u, Cost: cost, BodyModel: bodyModel}, nil
}

func (c *Catalog) pickModel(provider, requested, reported string) (*Model, error) {
	if m := c.aliases[strings.ToLower(strings.TrimSpace(requested))]; m != nil {
		return m, nil
	}
	for _, name := range []string{reported, requested} {
		if strings.TrimSpace(name) == "" {
			continue
		}
		if m, ok := c.Lookup(provider, name); ok {
			return m, nil
		}
	}
	switch {
	case reported == "" && requested == "":
		return nil, fmt.Errorf("%w: no model given and none in the response", ErrUnknownModel)
	case reported == "" || reported == requested:
		return nil, fmt.Errorf("%w %q (provider %q)", ErrUnknownModel, requested, provider)
	case requested == "":
		return nil, fmt.Errorf("%w %q (provider %q)", ErrUnknownModel, reported, provider)
	}
	return nil, fmt.Errorf("%w: neither %q nor %q (provider %q)", ErrUnknownModel, reported, requested, provider)
}
