// Package pricing prices LLM usage exactly: a price catalog, usage normalisation per API
// flavour, and integer money arithmetic. It is pure: no database, no network, no gRPC, and it
// imports nothing else of purser.
//
// # Catalog
//
// The catalog embedded in the binary is the "slim" data of pydantic/genai-prices at commit
// 47df840a (data/genai-prices-data_slim.json, MIT licence, see data/LICENSE-genai-prices).
// Embedded parses it; Load applies an operator overrides file on top (added or overridden
// model prices, aliases, a default price for unknown models); Watcher reloads that file when
// it changes. A Catalog is immutable; Version identifies its effective data
// ("genai-prices@47df840a+<sha256 prefix of data and overrides>") and is recorded with every
// settlement. Lookup resolves a (provider, model) pair to a *Model following genai-prices'
// rules (provider id or provider_match, model_match, fallback providers, case-insensitive
// match clauses) plus provider-prefixed names, "models/" prefixes and snapshot date suffixes;
// results are cached. ProviderForHost detects the provider from the API host.
//
// Embedded also sets each model's MaxOutputTokens from data/max_output_tokens.json, purser's
// table of the most output tokens one response can have, each figure with the provider
// documentation page it comes from; the overrides file can set it for any model
// (max_output_tokens). A reservation holds it when a request sets no output cap.
//
// # Money
//
// Amounts are int64 micro-USD ("micros"). Prices are decimals in USD per million tokens
// (per thousand requests for requests_kcount), parsed from the JSON number's text (never a
// float) into Price, an integer of 10^-9 USD/MTok; a price with more than 9 decimal places is
// rejected, not rounded (such catalog entries are listed by Catalog.Skipped). Since 1 USD/MTok
// is 1 micro per token, tokens × Price is an exact amount of 10^-9 micros; costs are summed in
// 128-bit integers and rounded up ONCE, at the end, to the next micro: 7 input tokens of
// gpt-4o-mini (0.15 USD/MTok) cost 1.05 micros, charged 2. A cost above math.MaxInt64 micros is
// ErrOverflow, never a wrapped value. FormatMicros and ParseMicros are the decimal string
// forms used on every external surface ("0.000150", "12.500000").
//
// # Usage convention
//
// Usage follows genai-prices: InputTokens is the request's total input INCLUDING cache reads,
// cache writes and input audio; OutputTokens is the total output INCLUDING reasoning and
// output audio. Cost charges each part that has its own price at that price and only the
// remainder of the total at the total's price. Tiered prices are "cliff" tiers picked by the
// request's total InputTokens: above a tier's start, all tokens of that kind pay the tier's
// price. ReasoningTokens is informational (already in OutputTokens).
//
// # Usage extraction
//
// ExtractUsage reads a response body (or the usage fragment the access-log sink rebuilds from
// Envoy metadata) with the catalog's extractors for the provider and API flavour, plus reasoning
// counts, the Anthropic streaming merge and OpenAI responses streaming. Token counts must be
// integers in [0, 2^53]; missing usage is ErrNoUsage or ErrIncompleteUsage, never zero.
//
// PriceResponse chains ExtractUsage, Lookup and Cost: settlement and `purser cost` (RunCost)
// share it.
package pricing
