package request

import (
	"errors"
	"fmt"
	"strconv"
)

// Body reading: the top-level members of each API's request (this file) and the content below
// them (body_content.go), over a JSON lexer that knows nothing of either (jsonscan.go).
//
// The body is read by a small single-pass JSON scanner instead of encoding/json because the
// parser must (1) match keys exactly and case-sensitively, as the providers do (encoding/json
// matches case-insensitively, so {"max_tokens":9000,"MAX_TOKENS":1} would read as 1), after
// decoding escapes ("max_tok\u0065ns" is max_tokens), and reject duplicates of the keys that
// set the price; (2) keep going over a truncated body and use what it saw; (3) bound the
// tokens of every string without allocating; and (4) bound nesting depth.
//
// What the input bound counts (docs/bounds.md): the body as compact JSON, every byte outside
// strings (braces, brackets, colons, commas, numbers, literals) as one token and every string
// as its two quotes plus the weights of its decoded characters (bound.go) — tool definitions,
// response schemas and unknown fields included, because providers render them into the
// prompt — plus messageOverhead per element of messages / contents / input arrays,
// requestOverhead per request, toolOverhead per tool, toolNewline per line break inside a
// tool definition, and Anthropic's tool-use system prompt. Embeddings count only "input",
// with token arrays counted exactly. Media are not counted as their base64 text:
//
//   - an image (a data URL or base64 payload whose media type is image/*, an image_url, an
//     image or input_image block, a Gemini part whose mimeType is image/*) is counted in
//     Images, for the caller to charge the per-image maximum of the model (ImageTokensFor);
//   - text sent as base64 (text/* payloads and data URLs) costs maxWeightPerByte per decoded
//     byte;
//   - anything else (audio, video, PDFs and other documents, a base64 payload without a
//     media type, a file id or URL that is not an image) sets ExternalInput: its tokens are
//     not bounded by its size in the body, only by the model's context window.
//
// Text under any other member name is always counted as text, so a prompt cannot be
// disguised as a cheap image.
const (
	// requestOverhead covers what a chat template adds once per request: BOS, reply priming
	// (OpenAI documents 3 tokens), Llama 3's and Gemma's assistant headers.
	requestOverhead = 16
	// messageOverhead covers what a chat template adds per message: OpenAI documents 3 plus 1
	// for a name; Gemma's and Llama 3's turn markers are 5.
	messageOverhead = 8
	// toolOverhead covers OpenAI's per-function framing (documented func_init 10 plus
	// func_end 12 tokens on top of names, descriptions and properties).
	toolOverhead = 24
	// toolNewline covers the prefix a provider may put on each line of a tool's description
	// when it renders the schema ("// " in OpenAI's rendering).
	toolNewline = 3
	// anthropicToolsOH is Anthropic's tool-use system prompt: at most 530 tokens documented
	// (Claude 3 Opus, tool_choice auto); 346 on current models.
	anthropicToolsOH = 600
	// anthropicTypedTool covers one Anthropic-defined client tool ({"type": "bash_...",
	// "text_editor_...", "computer_...", ...}): documented 245 (bash), 700 (text editor), 735
	// plus a 499-token system prompt (computer use).
	anthropicTypedTool = 1250
	maxModelLength     = 256
	maxReferenceLen    = 4096 // longer "references" are counted as text
)

var (
	errEmptyBody = errors.New("empty body")
	errNotObject = errors.New("body is not a JSON object")
)

// top-level fields whose value the parser reads.
type topField uint8

const (
	tfOther topField = iota
	tfModel
	tfStream
	tfStreamOptions
	tfMaxTokens
	tfMaxCompletionTokens
	tfMaxOutputTokens
	tfN
	tfBestOf
	tfGenerationConfig
	tfItems // messages, contents
	tfInput
	tfPrompt
	tfTools
	tfExternal // previous_response_id, conversation, cachedContent, mcp_servers
)

func topFieldOf(k []byte) topField {
	switch string(k) {
	case "model":
		return tfModel
	case "stream":
		return tfStream
	case "stream_options":
		return tfStreamOptions
	case "max_tokens":
		return tfMaxTokens
	case "max_completion_tokens":
		return tfMaxCompletionTokens
	case "max_output_tokens":
		return tfMaxOutputTokens
	case "n":
		return tfN
	case "best_of":
		return tfBestOf
	case "generationConfig", "generation_config":
		return tfGenerationConfig
	case "messages", "contents":
		return tfItems
	case "input":
		return tfInput
	case "prompt":
		return tfPrompt
	case "tools", "functions":
		return tfTools
	case "previous_response_id", "conversation", "cachedContent", "cached_content", "mcp_servers":
		return tfExternal
	}
	return tfOther
}

// honoured reports whether a dialect reads a price-relevant field.
func honoured(d dialect, f topField) bool {
	switch f {
	case tfModel:
		return d != dialectGemini && d != dialectGeminiEmbeddings
	case tfStream:
		return d != dialectEmbeddings && d != dialectGemini && d != dialectGeminiEmbeddings
	case tfStreamOptions, tfN:
		return d == dialectChat || d == dialectCompletions || d == dialectGeneric
	case tfMaxTokens:
		return d == dialectChat || d == dialectCompletions || d == dialectAnthropic || d == dialectGeneric
	case tfMaxCompletionTokens:
		return d == dialectChat || d == dialectGeneric
	case tfMaxOutputTokens:
		return d == dialectResponses || d == dialectGeneric
	case tfBestOf:
		return d == dialectCompletions || d == dialectGeneric
	case tfGenerationConfig:
		return d == dialectGemini || d == dialectGeneric
	}
	return false
}

// bodyParser walks one JSON body. Its zero value is not usable: see parseBody.
type bodyParser struct {
	scanner // nlExtra: toolNewline inside tool definitions, else 0
	dialect dialect

	tokens   int64
	images   int64
	refs     int64 // media references not yet classified (see objectLoop)
	external bool
	tools    bool

	model       string
	stream      bool
	streamUsage bool
	cap         int64
	hasCap      bool
	capErr      error
	choices     int64
	prompts     int64
	thinking    int64
	hasThinking bool
	seen        uint32
}

// bodyResult is what the body says.
type bodyResult struct {
	tokens      int64
	images      int64
	external    bool
	model       string
	stream      bool
	streamUsage bool
	cap         int64
	hasCap      bool
	capErr      error
	choices     int64
	thinking    int64
	hasThinking bool
	err         error // syntax or shape error (includes errJSONEOF)
}

func parseBody(data []byte, d dialect) bodyResult {
	p := bodyParser{scanner: scanner{data: data}, dialect: d, choices: 1}
	p.top()
	if p.err == nil {
		p.ws()
		if p.pos < len(p.data) {
			p.fail("data after the JSON object")
		}
	}
	if p.refs > 0 {
		p.external = true // references no enclosing block said were images
	}
	if d != dialectEmbeddings && d != dialectCompletions {
		p.tokens = addSat(p.tokens, requestOverhead)
	}
	if d == dialectAnthropic && p.tools {
		p.tokens = addSat(p.tokens, anthropicToolsOH)
	}
	choices := p.choices
	if d == dialectCompletions && p.prompts > 1 {
		choices = mulSat(choices, p.prompts)
	}
	return bodyResult{tokens: p.tokens, images: p.images, external: p.external, model: p.model, stream: p.stream,
		streamUsage: p.streamUsage, cap: p.cap, hasCap: p.hasCap, capErr: p.capErr, choices: choices,
		thinking: p.thinking, hasThinking: p.hasThinking, err: p.err}
}

func (p *bodyParser) addTokens(n int64) { p.tokens = addSat(p.tokens, n) }

// top reads the top-level object.
func (p *bodyParser) top() {
	if p.peek() != '{' {
		if p.err == nil {
			p.err = errNotObject
		}
		return
	}
	count := p.dialect != dialectEmbeddings
	if !p.openObject(count) {
		return
	}
	var kbuf [64]byte
	for more := p.firstMember(); more; more = p.nextMember() {
		key, ok := p.memberKey(kbuf[:], count)
		if !ok {
			return
		}
		p.member(topFieldOf(key), key)
	}
}

// Reading an object and counting it, on its '{':
//
//	if !p.openObject(count) { return }
//	for more := p.firstMember(); more; more = p.nextMember() {
//		key, ok := p.memberKey(buf, count)
//		if !ok { return }
//		// read the value
//	}

// openObject enters the object on its '{', counting its braces when count. It is false when
// the object is nested too deeply.
func (p *bodyParser) openObject(count bool) bool {
	if !p.enterObject() {
		return false
	}
	if count {
		p.addTokens(2)
	}
	return true
}

// memberKey reads a member's key and the ':' after it, counting the key as text (and the
// colon and comma) when count. The key is decoded into buf; it is nil when longer than buf
// (so it matches no known name). ok is false on a syntax error.
func (p *bodyParser) memberKey(buf []byte, count bool) (key []byte, ok bool) {
	if key, ok = p.key(buf, count); !ok {
		return nil, false
	}
	if count {
		p.addTokens(p.take() + 2 + 2) // quotes, colon, comma
	}
	if !p.colon() {
		return nil, false
	}
	return key, true
}

// textDone counts the string just read as text: its characters' weights and its quotes.
func (p *bodyParser) textDone() { p.addTokens(p.take() + 2) }

// member reads the value of a top-level member.
func (p *bodyParser) member(f topField, key []byte) {
	if f != tfOther && f < tfItems && honoured(p.dialect, f) {
		bit := uint32(1) << f
		if p.seen&bit != 0 {
			if p.err == nil {
				p.err = fmt.Errorf("duplicate key %q", string(key))
			}
			return
		}
		p.seen |= bit
	}
	d := p.dialect
	switch {
	case f == tfModel && honoured(d, f) && p.peek() == '"':
		var mbuf [maxModelLength]byte
		count := d != dialectEmbeddings
		p.str(count, mbuf[:], nil)
		m := mbuf[:p.capLen]
		if count {
			p.textDone()
		}
		if p.overflow {
			if p.err == nil {
				p.err = fmt.Errorf("model name longer than %d bytes", maxModelLength)
			}
			return
		}
		p.model = string(m)
	case f == tfStream && honoured(d, f):
		if p.peek() == 't' {
			p.stream = true
		}
		p.value(mkNone, mkNone)
	case f == tfStreamOptions && honoured(d, f):
		p.streamOptions()
	case (f == tfMaxTokens || f == tfMaxCompletionTokens || f == tfMaxOutputTokens) && honoured(d, f):
		p.capMember(key, false)
	case (f == tfN || f == tfBestOf) && honoured(d, f):
		p.capMember(key, true)
	case f == tfGenerationConfig && honoured(d, f):
		p.generationConfig()
	case d == dialectEmbeddings:
		if f == tfInput {
			p.tokenInput()
		} else {
			p.skip()
		}
	case f == tfItems, f == tfInput && (d == dialectResponses || d == dialectGeneric):
		p.items()
	case f == tfPrompt && d == dialectCompletions:
		p.prompts = p.tokenInput()
	case f == tfPrompt && d == dialectResponses:
		if p.peek() == '{' {
			p.external = true // a stored prompt template
		}
		p.value(mkNone, mkNone)
	case f == tfTools:
		p.toolList()
	case f == tfExternal:
		if c := p.peek(); c != 'n' && c != 0 {
			p.external = true
		}
		p.value(mkNone, mkNone)
	default:
		p.value(mkNone, mkNone)
	}
}

// capMember reads a positive integer member: an output cap, or a choice count when choice.
func (p *bodyParser) capMember(key []byte, choice bool) {
	v, ok, err := p.positiveInt()
	if err != nil {
		if p.capErr == nil {
			p.capErr = fmt.Errorf("invalid %s: %w", string(key), err)
		}
		return
	}
	if !ok {
		return
	}
	if choice {
		p.choices = max(p.choices, v)
		return
	}
	p.cap = max(p.cap, v)
	p.hasCap = true
}

// positiveInt reads a value that must be a JSON integer literal >= 1 fitting in int64. A
// null is absent (ok false, err nil).
func (p *bodyParser) positiveInt() (v int64, ok bool, err error) {
	switch c := p.peek(); {
	case c == 0:
		return 0, false, nil
	case c == 'n':
		p.value(mkNone, mkNone)
		return 0, false, nil
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.number()
		if p.err != nil {
			return 0, false, nil
		}
		raw := p.data[start:p.pos]
		p.addTokens(int64(len(raw)))
		shown := raw[:min(len(raw), 32)] // formatted only for an error: no allocation per cap
		if raw[0] == '-' {
			return 0, false, fmt.Errorf("%s: must be a positive integer", shown)
		}
		for _, b := range raw {
			if b < '0' || b > '9' {
				return 0, false, fmt.Errorf("%s: must be an integer", shown)
			}
			d := int64(b - '0')
			if v > (1<<63-1-d)/10 {
				return 0, false, fmt.Errorf("%s: too large", shown)
			}
			v = v*10 + d
		}
		if v == 0 {
			return 0, false, errors.New("0: must be a positive integer")
		}
		return v, true, nil
	case c == '"':
		p.value(mkNone, mkNone)
		return 0, false, errors.New("a string, must be an integer")
	default:
		p.value(mkNone, mkNone)
		return 0, false, errors.New("must be an integer")
	}
}

// streamOptions reads {"include_usage": true, ...}; a non-object is read as a plain value.
func (p *bodyParser) streamOptions() {
	if p.peek() != '{' {
		p.value(mkNone, mkNone)
		return
	}
	if !p.openObject(true) {
		return
	}
	var kbuf [64]byte
	for more := p.firstMember(); more; more = p.nextMember() {
		key, ok := p.memberKey(kbuf[:], true)
		if !ok {
			return
		}
		if string(key) == "include_usage" && p.peek() == 't' {
			p.streamUsage = true
		}
		p.value(mkNone, mkNone)
	}
}

// generationConfig reads Gemini's caps and thinking budget, rejecting repeated ones; every
// other member counts as text. A non-object is read as a plain value.
func (p *bodyParser) generationConfig() {
	if p.peek() != '{' {
		p.value(mkNone, mkNone)
		return
	}
	if !p.openObject(true) {
		return
	}
	var kbuf [64]byte
	var seen uint8
	for more := p.firstMember(); more; more = p.nextMember() {
		key, ok := p.memberKey(kbuf[:], true)
		if !ok {
			return
		}
		var bit uint8
		choice := false
		switch string(key) {
		case "maxOutputTokens":
			bit = 1
		case "max_output_tokens":
			bit = 2
		case "candidateCount":
			bit, choice = 4, true
		case "candidate_count":
			bit, choice = 8, true
		case "thinkingConfig", "thinking_config":
			if seen&16 != 0 {
				if p.err == nil {
					p.err = fmt.Errorf("duplicate key %q in generationConfig", string(key))
				}
				return
			}
			seen |= 16
			p.thinkingConfig()
			continue
		default:
			p.value(mkNone, mkNone)
			continue
		}
		if seen&bit != 0 {
			if p.err == nil {
				p.err = fmt.Errorf("duplicate key %q in generationConfig", string(key))
			}
			return
		}
		seen |= bit
		p.capMember(key, choice)
	}
}

// thinkingConfig reads Gemini's thinkingBudget (-1: dynamic, 0: off, else a token budget).
func (p *bodyParser) thinkingConfig() {
	if p.peek() != '{' {
		p.value(mkNone, mkNone)
		return
	}
	if !p.openObject(true) {
		return
	}
	var kbuf [64]byte
	for more := p.firstMember(); more; more = p.nextMember() {
		key, ok := p.memberKey(kbuf[:], true)
		if !ok {
			return
		}
		k := string(key)
		if k != "thinkingBudget" && k != "thinking_budget" {
			p.value(mkNone, mkNone)
			continue
		}
		if p.hasThinking {
			if p.err == nil {
				p.err = fmt.Errorf("duplicate key %q in thinkingConfig", k)
			}
			return
		}
		p.hasThinking = true
		if c := p.peek(); c == '-' || c >= '0' && c <= '9' {
			start := p.pos
			p.number()
			if p.err != nil {
				return
			}
			raw := p.data[start:p.pos]
			p.addTokens(int64(len(raw)))
			if v, err := strconv.ParseInt(string(raw), 10, 64); err == nil && v >= -1 {
				p.thinking = v
				continue
			}
		} else {
			p.value(mkNone, mkNone)
		}
		if p.capErr == nil {
			p.capErr = fmt.Errorf("invalid %s: must be an integer >= -1", k)
		}
	}
}

// items reads messages / contents / input: each array element costs messageOverhead.
func (p *bodyParser) items() {
	if p.peek() != '[' {
		p.value(mkNone, mkNone)
		return
	}
	p.addTokens(2)
	p.elements(func() {
		p.addTokens(messageOverhead + 1)
		p.value(mkNone, mkNone)
	})
}

// toolList reads tools / functions, noting server-side tools and charging each tool's
// framing; line breaks inside tool definitions cost toolNewline more.
func (p *bodyParser) toolList() {
	if p.peek() != '[' {
		p.value(mkNone, mkNone)
		return
	}
	p.addTokens(2)
	p.nlExtra = toolNewline
	p.elements(func() {
		p.tools = true
		p.addTokens(toolOverhead + 1)
		if p.peek() == '{' {
			p.object(mkNone, true)
			return
		}
		p.value(mkNone, mkNone)
	})
	p.nlExtra = 0
}

// tokenInput reads an embeddings input or a legacy completions prompt: a string, an array
// of strings, a token array or an array of token arrays. Token ids count one token each,
// exactly; text is bounded. It returns the number of prompts.
func (p *bodyParser) tokenInput() (prompts int64) {
	switch p.peek() {
	case '"':
		p.str(true, nil, nil)
		p.textDone()
		return 1
	case '[':
	default:
		p.value(mkNone, mkNone)
		return 1
	}
	ints := false
	p.elements(func() {
		switch c := p.peek(); {
		case c == '"':
			p.str(true, nil, nil)
			p.textDone()
			prompts++
		case c == '-' || c >= '0' && c <= '9':
			p.number()
			p.addTokens(1)
			ints = true
		case c == '[':
			prompts++
			p.elements(func() {
				if c := p.peek(); c == '-' || c >= '0' && c <= '9' {
					p.number()
					p.addTokens(1)
					return
				}
				p.value(mkNone, mkNone)
			})
		default:
			p.value(mkNone, mkNone)
		}
	})
	if prompts == 0 && ints {
		prompts = 1
	}
	return prompts
}
