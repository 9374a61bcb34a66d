package accesslog

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

// Policies for entries whose real cost is not known.
const (
	// ProviderError: the provider answered an error and reported no usage.
	ProviderErrorVoid       = "void"        // release the hold (default): errors are not billed
	ProviderErrorChargeHold = "charge_hold" // charge the hold anyway
	// UnknownModel: the response names a model the catalog cannot price.
	UnknownModelChargeHold   = "charge_hold"   // default
	UnknownModelDefaultPrice = "default_price" // price with the catalog's default price
)

// Causes recorded on reservations (and used as metric labels).
const (
	CauseUsage         = "usage"
	CauseNoUpstream    = "no_upstream"
	CauseProviderError = "provider_error"
	CauseCutOff        = "cut_off"
	CauseMissingUsage  = "missing_usage"
	// CauseCompressed: no usage, and the answer was compressed (content-encoding logged): the
	// proxy's usage filters cannot read compressed bytes.
	CauseCompressed = "missing_usage:compressed"
	// CauseStreamWithoutUsage: no usage in an event stream (an OpenAI-style stream that did
	// not ask for stream_options.include_usage, or a stream filter missing).
	CauseStreamWithoutUsage = "missing_usage:stream"
	CauseIncompleteUsage    = "incomplete_usage"
	CauseInvalidUsage       = "invalid_usage"
	CauseUnknownModel       = "unknown_model"
)

// verdict is what one entry does to its reservation.
type verdict struct {
	settle  budget.Settlement
	outcome string // metric label: settled, voided, charged_hold
}

// judge decides a final entry's effect on its reservation (reservationID set).
// provider/flavor/model come from the ext_authz metadata or, for a fallback join, the
// reservation row.
func (s *Sink) judge(e *Entry, reservationID, provider, flavor, model string) verdict {
	st := budget.Settlement{ReservationID: reservationID}
	hold := func(cause string) verdict {
		st.ChargeHold, st.Cause = true, cause
		if e.Interrupted != "" && cause == CauseCutOff {
			st.Cause = CauseCutOff + ":" + e.Interrupted
		}
		return verdict{settle: st, outcome: "charged_hold"}
	}
	// The missing-usage watchdog: of the answers the provider sent in full, how many carried
	// usage, by route, provider and model.
	found := func(ok bool) { s.m.usage(e.Route, provider, model, ok) }
	if e.Tokens != nil || e.Usage != nil {
		cost, tokens, usage, version, err := s.price(e, provider, flavor, model)
		switch {
		case err == nil:
			found(true)
			st.Cost, st.Tokens, st.Usage, st.CatalogVersion, st.Cause = cost, tokens, usage, version, CauseUsage
			return verdict{settle: st, outcome: "settled"}
		case errors.Is(err, pricing.ErrNoUsage):
			// Only a model name or partial keys: fall through to the no-usage rules.
		case errors.Is(err, pricing.ErrIncompleteUsage):
			found(false)
			s.m.usageProblem("incomplete")
			return hold(CauseIncompleteUsage)
		case errors.Is(err, pricing.ErrUnknownModel):
			s.m.usageProblem("unknown_model")
			return hold(CauseUnknownModel)
		default:
			found(false)
			s.m.usageProblem("invalid")
			return hold(CauseInvalidUsage)
		}
	}
	if e.UsageError {
		found(false)
		s.m.usageProblem("invalid")
		return hold(CauseInvalidUsage)
	}
	switch {
	case !e.UpstreamSent:
		// Envoy never sent a byte upstream (ext_authz error or denial after the hold
		// committed, no route, no healthy host, connection failure, client gone first).
		st.Void, st.Cause = true, CauseNoUpstream
		return verdict{settle: st, outcome: "voided"}
	case e.Interrupted != "" || e.ResponseCode == 0:
		return hold(CauseCutOff)
	case e.ResponseCode >= 400 && !e.ResponseFromExt:
		if s.cfg.ProviderError == ProviderErrorChargeHold {
			return hold(CauseProviderError)
		}
		st.Void, st.Cause = true, CauseProviderError
		return verdict{settle: st, outcome: "voided"}
	}
	found(false)
	switch {
	case compressed(e.ContentEncoding):
		s.m.usageProblem("compressed")
		return hold(CauseCompressed)
	case isEventStream(e.ContentType):
		s.m.usageProblem("stream")
		return hold(CauseStreamWithoutUsage)
	}
	s.m.usageProblem("missing")
	return hold(CauseMissingUsage)
}

// compressed reports a content-encoding other than identity.
func compressed(enc string) bool {
	enc = strings.TrimSpace(enc)
	return enc != "" && !strings.EqualFold(enc, "identity")
}

func isEventStream(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// price turns an entry's usage into money with the catalog in force, through the same code
// path as `purser cost`.
func (s *Sink) price(e *Entry, provider, flavor, model string) (cost, tokens int64, usage json.RawMessage, version string, err error) {
	cat := s.catalog()
	version = cat.Version()
	var u pricing.Usage
	var m *pricing.Model
	if t := e.Tokens; t != nil {
		if !t.Ok {
			return 0, 0, nil, version, pricing.ErrIncompleteUsage
		}
		u = pricing.Usage{InputTokens: t.Input, OutputTokens: t.Output, CacheReadTokens: t.CachedInput,
			CacheWriteTokens: t.CacheCreation, ReasoningTokens: t.Reasoning}
		name := t.Model
		if name == "" {
			name = model
		}
		var ok bool
		if m, ok = cat.Lookup(provider, name); !ok {
			if m, ok = cat.Lookup(provider, model); !ok {
				m, err = s.unknownModel(cat)
			}
		}
		if err != nil {
			return 0, 0, nil, version, err
		}
		c, cerr := m.CostAt(u, e.Start)
		if cerr != nil {
			return 0, 0, nil, version, cerr
		}
		cost = c.Total
	} else {
		body := unflatten(e.Usage)
		priced, perr := cat.PriceResponse(provider, flavor, model, body, e.Start)
		if errors.Is(perr, pricing.ErrUnknownModel) && s.cfg.UnknownModel == UnknownModelDefaultPrice {
			if dm, ok := cat.DefaultModel(); ok {
				// PriceResponse extracted the usage before it failed on the model.
				c, cerr := dm.CostAt(priced.Usage, e.Start)
				if cerr != nil {
					return 0, 0, nil, version, cerr
				}
				priced, perr = pricing.Priced{Model: dm, Usage: priced.Usage, Cost: c}, nil
			}
		}
		if perr != nil {
			return 0, 0, nil, version, perr
		}
		u, m, cost = priced.Usage, priced.Model, priced.Cost.Total
	}
	tokens = u.InputTokens + u.OutputTokens
	return cost, tokens, usageRecord(u, m.ID, m.Provider), version, nil
}

// usageRecord is what a settlement stores as its usage: json.Marshal of the usage with the
// model and provider that priced it, written without reflection (the same bytes:
// TestUsageRecord_MatchesJSONMarshal).
func usageRecord(u pricing.Usage, model, provider string) json.RawMessage {
	b := make([]byte, 0, 224+len(model)+len(provider))
	b = append(b, `{"input_tokens":`...)
	b = strconv.AppendInt(b, u.InputTokens, 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, u.OutputTokens, 10)
	b = append(b, `,"cache_read_tokens":`...)
	b = strconv.AppendInt(b, u.CacheReadTokens, 10)
	b = append(b, `,"cache_write_tokens":`...)
	b = strconv.AppendInt(b, u.CacheWriteTokens, 10)
	b = append(b, `,"reasoning_tokens":`...)
	b = strconv.AppendInt(b, u.ReasoningTokens, 10)
	b = append(b, `,"input_audio_tokens":`...)
	b = strconv.AppendInt(b, u.InputAudioTokens, 10)
	b = append(b, `,"output_audio_tokens":`...)
	b = strconv.AppendInt(b, u.OutputAudioTokens, 10)
	b = append(b, `,"cache_audio_read_tokens":`...)
	b = strconv.AppendInt(b, u.CacheAudioReadTokens, 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, model)
	b = append(b, `,"provider":`...)
	b = appendJSONString(b, provider)
	return append(b, '}')
}

// appendJSONString appends s as json.Marshal writes it: as is when every byte is printable
// ASCII that encoding/json leaves alone, else through json.Marshal (escapes, HTML-safe
// characters, invalid UTF-8).
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func (s *Sink) unknownModel(cat *pricing.Catalog) (*pricing.Model, error) {
	if s.cfg.UnknownModel == UnknownModelDefaultPrice {
		if m, ok := cat.DefaultModel(); ok {
			return m, nil
		}
	}
	return nil, pricing.ErrUnknownModel
}

// unreservedFor builds the record of spend that reached the provider with no reservation to
// settle (a route that failed open, or a Check that was lost), charged to the subjects the
// entry names (global when it names none).
func (s *Sink) unreservedFor(e *Entry) (budget.Unreserved, bool) {
	if e.Tokens == nil && e.Usage == nil {
		return budget.Unreserved{}, false
	}
	cost, tokens, usage, version, err := s.price(e, e.Provider, e.Flavor, e.Model)
	if err != nil {
		return budget.Unreserved{}, false
	}
	var subjects []budget.Subject
	for _, raw := range e.Subjects {
		if sub, err := budget.ParseSubject(raw); err == nil {
			subjects = append(subjects, sub)
		}
	}
	if len(subjects) == 0 {
		subjects = []budget.Subject{budget.Global}
	}
	return budget.Unreserved{
		IdempotencyKey: unreservedKey(e),
		KeyID:          e.KeyID,
		Subjects:       subjects,
		Target:         budget.Target{Model: e.Model},
		Provider:       e.Provider, Flavor: e.Flavor, Route: e.Route, RequestID: e.RequestID,
		At:   e.Start,
		Cost: cost, Tokens: tokens, Usage: usage, CatalogVersion: version,
	}, true
}

// unreservedKey makes a replayed or duplicated entry charge once.
func unreservedKey(e *Entry) []byte {
	return []byte("unreserved\x00" + e.NodeID + "\x00" + e.RequestID + "\x00" + strconv.FormatInt(e.Start.UnixNano(), 10))
}
