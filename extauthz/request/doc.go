// Package request turns an Envoy ext_authz CheckRequest into what purser needs to reserve a
// budget: is it billable, which provider, API flavour and model, streaming or not, the output
// cap, an upper bound of the input tokens (docs/bounds.md), the API-key candidates and the
// subjects that can be derived without a database.
//
// Parse is a pure function (no I/O, no globals with state), so it can be table-tested and
// fuzzed; the extauthz server applies policy to its result. It follows Envoy's CheckRequest
// contract (docs/architecture.md; shared reference envoy.md sections 1-3 and 8): lower-cased
// header keys including pseudo-headers, duplicates joined with ",", header_map when
// encode_raw_headers is on, raw_body (pack_as_bytes) preferred over body,
// x-envoy-auth-partial-body, context_extensions, metadata_context and route_metadata_context.
//
// Decisions:
//
//   - Only POST is billable. GET, HEAD, DELETE... never are, whatever the route says.
//   - Paths are recognised by their suffix, so gateway prefixes work (see flavor.go). An
//     unrecognised POST is not billable unless the route context sets api_flavor; a
//     recognised endpoint that costs money but cannot be estimated (images, audio, batches,
//     fine-tuning, realtime, Assistants runs, Ollama's and Bedrock's native APIs) is reported
//     as Unpriced.
//   - Provider: route context, else the host (api.openai.com, api.anthropic.com,
//     generativelanguage.googleapis.com, [*-]aiplatform.googleapis.com, *.openai.azure.com,
//     *.cognitiveservices.azure.com, *.services.ai.azure.com), else the path shape: Anthropic
//     Messages, Gemini/Vertex model verbs and Azure deployments name their provider, while the
//     OpenAI paths are the lingua franca of self-hosted servers and give "".
//   - api_flavor "openai-compatible" is refined to the path's flavour (chat, completions,
//     responses, embeddings) when the path is an OpenAI path; any other api_flavor overrides
//     the path. An unknown flavour is billable and its body counted generically.
//   - Output caps must be JSON integer literals >= 1 that fit in int64; anything else
//     present (1.5, -5, "12", 1e309, 2^63, 0) sets CapError. null means absent. When a
//     flavour honours two caps (max_tokens and max_completion_tokens) the larger wins.
//   - Keys that set the price (model, stream, caps, n, best_of, generationConfig) must not be
//     repeated: a duplicate is a BodyError, because providers disagree on which one wins.
//   - A truncated body is parsed as far as it goes; InputTokens then adds maxWeightPerByte
//     per missing byte of its content-length, and ExternalInput is set because the missing
//     part may hold media. Without a content-length the missing part cannot be bounded:
//     Truncated is set and ContentLength is -1, for the caller to decide.
//   - InputTokens is an upper bound for every supported tokenizer (bound.go, body.go;
//     proved against o200k_base and cl100k_base in bound_test.go); images are charged their
//     model's documented maximum (media.go). When ExternalInput is set only the model's
//     context window bounds the input. Callers should clamp InputTokens to the window.
package request
