package request

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Body reading.
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
	maxDepth = 256
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
	errJSONEOF   = errors.New("unexpected end of JSON input")
)

// jsonError is a syntax error at a byte offset. It never quotes body content.
type jsonError struct {
	off int
	msg string
}

func (e *jsonError) Error() string { return fmt.Sprintf("invalid JSON at byte %d: %s", e.off, e.msg) }

// member kinds that matter for media detection.
type mkind uint8

const (
	mkNone mkind = iota
	mkData
	mkURL
	mkImageURL
	mkFileRef
	mkSource
	mkMime
	mkType
)

func memberKind(k []byte) mkind {
	switch string(k) {
	case "data", "file_data":
		return mkData
	case "url":
		return mkURL
	case "image_url":
		return mkImageURL
	case "file_id", "file_url", "fileUri", "file_uri", "video_url", "audio_url":
		return mkFileRef
	case "source":
		return mkSource
	case "media_type", "mimeType", "mime_type":
		return mkMime
	case "type":
		return mkType
	}
	return mkNone
}

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
	data    []byte
	pos     int
	depth   int
	err     error
	cnt     counter
	dialect dialect
	// captured length and overflow flag of the last str call
	capLen   int
	overflow bool

	tokens    int64
	images    int64
	refs      int64 // media references not yet classified (see objectLoop)
	external  bool
	tools     bool
	nlExtra   int64 // toolNewline inside tool definitions, else 0
	toolDepth int

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

// counter sums the weights of the characters of one string (bound.go).
type counter struct{ units int64 }

// take returns the sum since the last take and resets it.
func (c *counter) take() int64 {
	n := c.units
	c.units = 0
	return n
}

func parseBody(data []byte, d dialect) bodyResult {
	p := bodyParser{data: data, dialect: d, choices: 1}
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

func (p *bodyParser) fail(msg string) {
	if p.err == nil {
		p.err = &jsonError{off: p.pos, msg: msg}
	}
}

func (p *bodyParser) eof() {
	if p.err == nil {
		p.err = errJSONEOF
	}
}

func (p *bodyParser) ws() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peek skips white space and returns the next byte, or 0 (and an EOF error) at the end.
func (p *bodyParser) peek() byte {
	p.ws()
	if p.pos >= len(p.data) {
		p.eof()
		return 0
	}
	return p.data[p.pos]
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

// Reading an object, on its '{':
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
	if !p.enter() {
		return false
	}
	p.pos++
	if count {
		p.addTokens(2)
	}
	return true
}

// firstMember reports whether the object just opened has a member; an empty one is closed.
func (p *bodyParser) firstMember() bool {
	if p.peek() == '}' {
		p.pos++
		p.depth--
		return false
	}
	return p.err == nil
}

// nextMember reads what follows a member's value: true at ',' (another member follows),
// false at '}' (the object is closed) or on an error.
func (p *bodyParser) nextMember() bool {
	if p.err != nil {
		return false
	}
	switch p.peek() {
	case ',':
		p.pos++
		return true
	case '}':
		p.pos++
		p.depth--
		return false
	}
	p.fail("',' or '}' expected")
	return false
}

// memberKey reads a member's key and the ':' after it, counting the key as text (and the
// colon and comma) when count. The key is decoded into buf; it is nil when longer than buf
// (so it matches no known name). ok is false on a syntax error.
func (p *bodyParser) memberKey(buf []byte, count bool) (key []byte, ok bool) {
	if p.peek() != '"' {
		p.fail("object key expected")
		return nil, false
	}
	p.str(count, buf, nil)
	if !p.overflow {
		key = buf[:p.capLen]
	}
	if count {
		p.addTokens(p.cnt.take() + 2 + 2) // quotes, colon, comma
	}
	if p.peek() != ':' {
		p.fail("':' expected")
		return nil, false
	}
	p.pos++
	return key, true
}

// textDone counts the string just read as text: its characters' weights and its quotes.
func (p *bodyParser) textDone() { p.addTokens(p.cnt.take() + 2) }

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

func (p *bodyParser) enter() bool {
	if p.depth >= maxDepth {
		p.fail(fmt.Sprintf("nesting deeper than %d", maxDepth))
		return false
	}
	p.depth++
	return true
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

// elements reads an array, calling fn positioned at each element.
func (p *bodyParser) elements(fn func()) {
	if !p.enter() {
		return
	}
	p.pos++
	if p.peek() == ']' {
		p.pos++
		p.depth--
		return
	}
	for p.err == nil {
		fn()
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			p.depth--
			return
		default:
			p.fail("',' or ']' expected")
			return
		}
	}
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

// objState collects media evidence inside one object.
type objState struct {
	payload   int64     // decoded bytes of base64 payloads under "data"
	first     int       // offset of the first payload's string, to count it as text
	more      int64     // characters of any further payload (a repeated "data")
	media     mediaKind // the most expensive kind a sibling media type names
	block     blockKind // what the object's "type" says it is
	plainText bool      // "type": "text": a "data" payload is the text itself, not base64
	refs      int64     // p.refs when the object opened
}

// mediaKind is what a declared media type makes of a payload, cheapest first.
type mediaKind uint8

const (
	mediaNone  mediaKind = iota // no media type given
	mediaImage                  // image/*: one image
	mediaText                   // text/*, JSON, XML: text, sent as base64 or plain
	mediaOther                  // audio, video, PDF, any other document: unbounded
)

// mediaKindOf classifies a media type ("image/png", "text/plain; charset=utf-8").
func mediaKindOf(mime []byte) mediaKind {
	switch {
	case hasPrefixFoldBytes(mime, "image/"):
		return mediaImage
	case hasPrefixFoldBytes(mime, "text/"), hasPrefixFoldBytes(mime, "application/json"),
		hasPrefixFoldBytes(mime, "application/xml"):
		return mediaText
	}
	return mediaOther
}

// blockKind is what a content block's "type" says about the references inside it.
type blockKind uint8

const (
	blockUnknown blockKind = iota // no type, or a source kind (url, base64, file, text): ask the parent
	blockImage                    // image, input_image, image_url: references are images
	blockMedia                    // document, input_file, input_audio, audio, video, ...: unbounded
)

func blockKindOf(t []byte) blockKind {
	switch string(t) {
	case "image", "input_image", "image_url":
		return blockImage
	case "document", "input_file", "input_audio", "audio", "video", "input_video", "container_upload":
		return blockMedia
	}
	return blockUnknown
}

// value reads any value, counting its tokens. k is the member name it sits under (arrays
// pass theirs to their elements), parent the member name of the enclosing object.
func (p *bodyParser) value(k, parent mkind) {
	if p.err != nil {
		return
	}
	switch c := p.peek(); {
	case c == 0:
	case c == '{':
		p.object(k, false)
	case c == '[':
		p.addTokens(2)
		p.elements(func() {
			p.addTokens(1)
			p.value(k, parent)
		})
	case c == '"':
		p.stringValue(k, parent, false)
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.number()
		p.addTokens(int64(p.pos - start))
	case c == 't':
		p.literal("true")
		p.addTokens(4)
	case c == 'f':
		p.literal("false")
		p.addTokens(5)
	case c == 'n':
		p.literal("null")
		p.addTokens(4)
	default:
		p.fail("value expected")
	}
}

// object reads an object under member name self. At tool level it notes server-side tools.
func (p *bodyParser) object(self mkind, toolLevel bool) {
	if !p.openObject(true) {
		return
	}
	st := objState{refs: p.refs}
	p.objectLoop(self, toolLevel, &st)
	// charged also when the body ended inside the object
	switch {
	case st.payload == 0:
	case st.media == mediaImage:
		p.images++
	case st.media == mediaText && st.plainText:
		p.textAt(st.first)
		p.addTokens(mulSat(st.more, maxWeightPerByte))
	case st.media == mediaText:
		p.addTokens(mulSat(st.payload, maxWeightPerByte)) // base64 text: any character, any weight
	default:
		p.external = true // audio, video, documents, untyped payloads
	}
	// References inside: an image block's are images, a document's unbounded; otherwise a
	// media type of this object decides; otherwise the enclosing object does.
	if refs := p.refs - st.refs; refs > 0 {
		switch {
		case st.block == blockImage, st.block == blockUnknown && st.media == mediaImage:
			p.images = addSat(p.images, refs)
			p.refs = st.refs
		case st.block == blockMedia, st.media != mediaNone:
			p.external = true
			p.refs = st.refs
		}
	}
}

// textAt counts the string that starts at off as text, then returns to where the parser was.
func (p *bodyParser) textAt(off int) {
	pos, err := p.pos, p.err
	p.pos = off
	p.str(true, nil, nil)
	p.textDone()
	p.pos, p.err = pos, err
}

// objectLoop reads the members of an object whose '{' has been consumed.
func (p *bodyParser) objectLoop(self mkind, toolLevel bool, st *objState) {
	var kbuf [64]byte
	for more := p.firstMember(); more; more = p.nextMember() {
		key, ok := p.memberKey(kbuf[:], true)
		if !ok {
			return
		}
		k := memberKind(key)
		if toolLevel && isServerToolKey(key) {
			p.external = true
		}
		if (k == mkMime || k == mkType) && p.peek() == '"' {
			var vbuf [64]byte
			p.str(true, vbuf[:], nil)
			v := vbuf[:p.capLen]
			p.textDone()
			if k == mkMime {
				st.media = max(st.media, mediaKindOf(v))
				continue
			}
			st.block = max(st.block, blockKindOf(v))
			st.plainText = st.plainText || string(v) == "text"
			if toolLevel && isServerToolType(v) {
				p.external = true
			} else if toolLevel && p.dialect == dialectAnthropic && string(v) != "custom" && string(v) != "function" {
				p.addTokens(anthropicTypedTool)
			}
		} else if k == mkData && p.peek() == '"' {
			at := p.pos
			if n := p.stringValue(k, self, true); n > 0 {
				if st.payload == 0 {
					st.first = at
				} else {
					st.more += int64(p.pos - at)
				}
				st.payload += n
			}
		} else {
			p.value(k, self)
		}
	}
}

// stringValue reads a string value, as media when its member name says it may be one. A
// base64 payload under "data" is only accepted as a direct object member (payloadOK); its
// decoded size is returned for the object to charge once it knows the media type.
func (p *bodyParser) stringValue(k, parent mkind, payloadOK bool) (payload int64) {
	if p.err != nil {
		return 0
	}
	start := p.pos
	switch k {
	case mkData, mkURL, mkImageURL, mkFileRef:
		if p.dataURL() {
			return 0
		}
		if k == mkData {
			b64 := true
			n := p.str(false, nil, &b64)
			if b64 && payloadOK && (n >= 64 || p.err == errJSONEOF) {
				return max(n*3/4, 1)
			}
			if p.err != nil && p.err != errJSONEOF {
				return 0
			}
			break // text after all: count it below
		}
		ref := k == mkImageURL || k == mkFileRef || k == mkURL && (parent == mkImageURL || parent == mkSource || parent == mkFileRef)
		if !ref {
			break
		}
		n := p.str(false, nil, nil)
		if n > maxReferenceLen || p.err != nil && p.err != errJSONEOF {
			break
		}
		if k == mkImageURL || parent == mkImageURL {
			p.images++ // OpenAI's image_url: an image by definition
		} else {
			p.refs++ // a file or a source: the enclosing block says what it is
		}
		return 0
	}
	if p.pos != start { // rescan as text
		p.pos = start
		if p.err == errJSONEOF {
			p.err = nil
		}
		if p.err != nil {
			return 0
		}
	}
	p.str(true, nil, nil)
	p.textDone()
	return 0
}

// dataURL reads the string at p.pos if it is a data URL and charges it by its media type.
func (p *bodyParser) dataURL() bool {
	raw := p.data[p.pos+1:]
	if len(raw) < 5 || !hasPrefixFoldBytes(raw[:5], "data:") {
		return false
	}
	head := raw[:min(len(raw), 256)]
	comma := -1
	for i, b := range head {
		if b == ',' {
			comma = i
			break
		}
		if b == '"' || b == '\\' {
			return false
		}
	}
	if comma < 0 {
		return false
	}
	mime, params, _ := bytes.Cut(head[5:comma], []byte{';'})
	n := p.str(false, nil, nil) - int64(comma+1)
	switch kind := mediaKindOf(mime); {
	case kind == mediaImage:
		p.images++
	case kind == mediaText || len(mime) == 0: // "data:;base64,..." is text/plain (RFC 2397)
		if hasSuffixFoldBytes(params, "base64") {
			n = n * 3 / 4
		}
		p.addTokens(2 + mulSat(max(n, 0), maxWeightPerByte)) // percent-decoding only shortens
	default:
		p.external = true
	}
	return true
}

// str reads the string at p.pos (on its opening quote) and returns its decoded length in
// bytes. With text it adds the characters' weights to p.cnt; with capture it copies the
// decoded bytes into capture while they fit (p.capLen bytes; p.overflow reports the rest);
// with b64 it clears *b64 unless every character is in the base64 alphabets (standard,
// URL-safe, line breaks).
func (p *bodyParser) str(text bool, capture []byte, b64 *bool) int64 {
	p.overflow, p.capLen = false, 0
	p.pos++ // opening quote
	var n int64
	data := p.data
	for p.pos < len(data) {
		if k := plainRun(data[p.pos:]); k > 0 {
			// a run of plain ASCII (no quote, backslash, control or non-ASCII byte): one
			// token per byte at most
			seg := data[p.pos : p.pos+k]
			if text {
				p.cnt.units += int64(k)
			}
			if capture != nil {
				p.keep(capture, seg)
			}
			if b64 != nil && *b64 && base64Run(seg) < k {
				*b64 = false
			}
			p.pos += k
			n += int64(k)
			continue
		}
		var r rune
		var size int
		switch c := data[p.pos]; {
		case c == '"':
			p.pos++
			return n
		case c == '\\':
			var ok bool
			r, size, ok = p.escape()
			if !ok {
				return n
			}
		case c < 0x20:
			p.fail("control character in string")
			return n
		default:
			r, size = utf8.DecodeRune(data[p.pos:])
			p.pos += size
		}
		// r came from an escape or a multi-byte sequence
		if r < utf8.RuneSelf {
			n++
			if text {
				p.cnt.units++
				if r == '\n' {
					p.cnt.units += p.nlExtra
				}
			}
			if b64 != nil && *b64 && !isBase64Char(byte(r)) {
				*b64 = false
			}
		} else {
			n += int64(size)
			if text {
				p.cnt.units += runeWeight(r, size)
			}
			if b64 != nil {
				*b64 = false
			}
		}
		if capture != nil {
			if l := utf8.RuneLen(r); l > 0 && p.capLen+l <= len(capture) {
				p.capLen += utf8.EncodeRune(capture[p.capLen:], r)
			} else {
				p.overflow = true
			}
		}
	}
	p.eof()
	return n
}

// keep copies b into capture after what it holds, while it fits; p.overflow reports the rest.
func (p *bodyParser) keep(capture, b []byte) {
	k := copy(capture[p.capLen:], b)
	p.capLen += k
	if k < len(b) {
		p.overflow = true
	}
}

// escape decodes the escape sequence at p.pos and advances past it. size is the UTF-8
// length the character counts for (3 for a lone surrogate).
func (p *bodyParser) escape() (r rune, size int, ok bool) {
	data := p.data
	if p.pos+1 >= len(data) {
		p.pos = len(data)
		p.eof()
		return 0, 0, false
	}
	switch e := data[p.pos+1]; e {
	case '"', '\\', '/':
		r = rune(e)
	case 'b':
		r = '\b'
	case 'f':
		r = '\f'
	case 'n':
		r = '\n'
	case 'r':
		r = '\r'
	case 't':
		r = '\t'
	case 'u':
		r1, ok1 := p.hex4(p.pos + 2)
		if !ok1 {
			return 0, 0, false
		}
		p.pos += 6
		if r1 >= 0xd800 && r1 < 0xdc00 && p.pos+6 <= len(data) && data[p.pos] == '\\' && data[p.pos+1] == 'u' {
			if r2, ok2 := p.hex4(p.pos + 2); ok2 && r2 >= 0xdc00 && r2 < 0xe000 {
				p.pos += 6
				return 0x10000 + (r1-0xd800)<<10 + (r2 - 0xdc00), 4, true
			}
			if p.err != nil {
				return 0, 0, false
			}
		}
		if r1 >= 0xd800 && r1 < 0xe000 {
			return utf8.RuneError, 3, true // lone surrogate
		}
		return r1, max(utf8.RuneLen(r1), 1), true
	default:
		p.fail("invalid escape")
		return 0, 0, false
	}
	p.pos += 2
	return r, 1, true
}

func (p *bodyParser) hex4(at int) (rune, bool) {
	if at+4 > len(p.data) {
		p.pos = len(p.data)
		p.eof()
		return 0, false
	}
	var r rune
	for _, c := range p.data[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c|0x20 >= 'a' && c|0x20 <= 'f':
			r = r<<4 | rune(c|0x20-'a'+10)
		default:
			p.pos = at
			p.fail("invalid \\u escape")
			return 0, false
		}
	}
	return r, true
}

// number reads a JSON number. A number that reaches the end of the body is incomplete.
func (p *bodyParser) number() {
	data := p.data
	i := p.pos
	if i < len(data) && data[i] == '-' {
		i++
	}
	digits := func() int {
		j := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i - j
	}
	switch {
	case i >= len(data):
		p.pos = i
		p.eof()
		return
	case data[i] == '0':
		i++
	case digits() == 0:
		p.pos = i
		p.fail("invalid number")
		return
	}
	if i < len(data) && data[i] == '.' {
		i++
		if digits() == 0 {
			p.pos = i
			if i >= len(data) {
				p.eof()
			} else {
				p.fail("invalid number")
			}
			return
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if digits() == 0 {
			p.pos = i
			if i >= len(data) {
				p.eof()
			} else {
				p.fail("invalid number")
			}
			return
		}
	}
	p.pos = i
	if i >= len(data) {
		p.eof()
	}
}

func (p *bodyParser) literal(lit string) {
	rest := p.data[p.pos:]
	if len(rest) < len(lit) {
		if string(rest) == lit[:len(rest)] {
			p.pos = len(p.data)
			p.eof()
			return
		}
		p.fail("invalid literal")
		return
	}
	if string(rest[:len(lit)]) != lit {
		p.fail("invalid literal")
		return
	}
	p.pos += len(lit)
}

// skip validates a value without counting it.
func (p *bodyParser) skip() {
	if p.err != nil {
		return
	}
	switch c := p.peek(); {
	case c == 0:
	case c == '{':
		if !p.openObject(false) {
			return
		}
		for more := p.firstMember(); more; more = p.nextMember() {
			if _, ok := p.memberKey(nil, false); !ok {
				return
			}
			p.skip()
		}
	case c == '[':
		p.elements(p.skip)
	case c == '"':
		p.str(false, nil, nil)
	case c == '-' || c >= '0' && c <= '9':
		p.number()
	case c == 't':
		p.literal("true")
	case c == 'f':
		p.literal("false")
	case c == 'n':
		p.literal("null")
	default:
		p.fail("value expected")
	}
}

// plainRun returns the length of the run of ASCII string bytes that need no attention
// (no quote, backslash or control character) at the start of s.
func plainRun(s []byte) int {
	for i, c := range s {
		if c == '"' || c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			return i
		}
	}
	return len(s)
}

// base64Run returns the length of the run of base64 characters at the start of s.
func base64Run(s []byte) int {
	for i, c := range s {
		if !isBase64Char(c) {
			return i
		}
	}
	return len(s)
}

func isBase64Char(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
		c == '+' || c == '/' || c == '=' || c == '-' || c == '_' || c == '\n' || c == '\r'
}

// isServerToolType reports tool types that the provider runs itself, adding input the body
// does not contain (search results, fetched pages, file contents, MCP tool output).
func isServerToolType(t []byte) bool {
	for _, prefix := range [...]string{"web_search", "web_fetch", "code_execution", "code_interpreter",
		"file_search", "mcp", "image_generation", "tool_search"} {
		if hasPrefixFoldBytes(t, prefix) {
			return true
		}
	}
	return false
}

// isServerToolKey reports Gemini tool members that run on Google's side.
func isServerToolKey(k []byte) bool {
	switch string(k) {
	case "googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval",
		"codeExecution", "code_execution", "urlContext", "url_context", "fileSearch", "file_search",
		"googleMaps", "google_maps", "enterpriseWebSearch", "enterprise_web_search", "retrieval":
		return true
	}
	return false
}

func hasPrefixFoldBytes(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && equalFoldBytes(b[:len(prefix)], prefix)
}

func hasSuffixFoldBytes(b []byte, suffix string) bool {
	return len(b) >= len(suffix) && equalFoldBytes(b[len(b)-len(suffix):], suffix)
}

// equalFoldBytes compares b with the lower-case ASCII string lower, ignoring ASCII case.
func equalFoldBytes(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(lower); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
