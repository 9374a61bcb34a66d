package pricing

// Flavor is an API flavour: which request shape the Check path reads (extauthz/request) and
// which usage extractor settles the response (ExtractUsage). Flavours travel between the two
// as the api_flavor dynamic-metadata value, and operators name them in the api_flavor
// route-context key (docs/architecture.md). This is the one list of them.
type Flavor string

// API flavours.
const (
	FlavorChat             Flavor = "chat"              // OpenAI Chat Completions (and OpenAI-compatible servers)
	FlavorCompletions      Flavor = "completions"       // OpenAI legacy Completions: same usage shape as chat
	FlavorResponses        Flavor = "responses"         // OpenAI Responses
	FlavorEmbeddings       Flavor = "embeddings"        // OpenAI Embeddings
	FlavorAnthropic        Flavor = "anthropic"         // Anthropic Messages
	FlavorGemini           Flavor = "gemini"            // Gemini generateContent / streamGenerateContent (genai-prices "default" for google)
	FlavorGeminiEmbeddings Flavor = "gemini-embeddings" // Gemini embedContent / batchEmbedContents
	// FlavorOpenAICompatible is a route-context value: a self-hosted server on OpenAI's paths.
	// The Check path refines it by the path; ExtractUsage reads it as chat.
	FlavorOpenAICompatible Flavor = "openai-compatible"
	// FlavorDefault asks ExtractUsage for the provider's default extractor.
	FlavorDefault Flavor = "default"
)
