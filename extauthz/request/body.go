package request

import (
	"bytes"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Body reading.
//
// The body is read by a small single-pass JSON scanner instead of encoding/json because the
// parser must (1) match keys exactly and case-sensitively, as the providers do (encoding/json
// matches case-insensitively, so {"max_tokens":9000,"MAX_TOKENS":1} would read as 1), after
// decoding escapes ("max_tok\u0065ns" is max_tokens), and reject duplicates of the keys that
// set the price; (2) keep going over a truncated body and use what it saw; (3) estimate the
// tokens of every string without allocating; and (4) bound nesting depth.
//
// What counts as input: every string, key, number and literal of the body (tool
// definitions, response schemas and unknown fields included), each string costing its text
// estimate plus one token, each object or array one token; plus messageOverhead per element
// of messages / contents / input arrays and requestOverhead per request. Embeddings count only
// "input", with token arrays counted exactly. Media parts are recognised by the member names
// the APIs use and charged by their media type instead of their base64 text:
//
//   - a data URL ("data:<mime>;base64,...") under url, image_url, data or file_data:
//     image/* costs Config.ImageTokens, audio/* and video/* max(ImageTokens,
//     bytes/MediaBytesPerToken), any other type (text, JSON, PDF and other documents, whose
//     tokens their size in bytes does not bound) is counted as text, characters as sent;
//   - a base64 string of 64+ characters under data (Anthropic source.data, Gemini
//     inlineData.data, OpenAI input_audio.data) is charged the same way at the end of its
//     object, by the type a sibling media_type / mimeType / mime_type gives; without one it
//     is sized as audio (OpenAI input_audio names only a format);
//   - an image reference (image_url string, url inside image_url) costs ImageTokens;
//   - a file reference (file_id, file_url, fileUri, file_uri, video_url, audio_url, url inside
//     an Anthropic source) costs ImageTokens and sets ExternalInput.
//
// Text under any other member name is always counted as text, so a prompt cannot be
// disguised as a cheap image.
const (
	maxDepth         = 256
	requestOverhead  = 8   // chat templates, reply priming
	messageOverhead  = 4   // per message / content / input item
	anthropicToolsOH = 400 // Anthropic's tool-use system prompt (313-346 tokens documented)
	maxModelLength   = 256
	maxReferenceLen  = 4096 // longer "references" are counted as text
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
	set     settings
	dialect dialect
	// captured length and overflow flag of the last str call
	capLen   int
	overflow bool

	tokens   int64
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
	seen        uint32
}

// bodyResult is what the body says.
type bodyResult struct {
	tokens      int64
	external    bool
	model       string
	stream      bool
	streamUsage bool
	cap         int64
	hasCap      bool
	capErr      error
	choices     int64
	err         error // syntax or shape error (includes errJSONEOF)
}

func parseBody(data []byte, d dialect, set settings) bodyResult {
	p := bodyParser{data: data, set: set, dialect: d, choices: 1}
	p.top()
	if p.err == nil {
		p.ws()
		if p.pos < len(p.data) {
			p.fail("data after the JSON object")
		}
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
	return bodyResult{tokens: p.tokens, external: p.external, model: p.model, stream: p.stream,
		streamUsage: p.streamUsage, cap: p.cap, hasCap: p.hasCap, capErr: p.capErr, choices: choices, err: p.err}
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

// openObject enters the object on its '{', counting it as a token when count. It is false
// when the object is nested too deeply.
func (p *bodyParser) openObject(count bool) bool {
	if !p.enter() {
		return false
	}
	p.pos++
	if count {
		p.addTokens(1)
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

// memberKey reads a member's key and the ':' after it, counting the key as text when count.
// The key is decoded into buf; it is nil when longer than buf (so it matches no known name).
// ok is false on a syntax error.
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
		p.addTokens(p.cnt.take() + 1)
	}
	if p.peek() != ':' {
		p.fail("':' expected")
		return nil, false
	}
	p.pos++
	return key, true
}

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
			p.addTokens(p.cnt.take() + 1)
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
		p.addTokens(1)
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

// generationConfig reads Gemini's caps, rejecting repeated ones; every other member counts
// as text. A non-object is read as a plain value.
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
	p.addTokens(1)
	p.elements(func() {
		p.addTokens(messageOverhead)
		p.value(mkNone, mkNone)
	})
}

// toolList reads tools / functions, noting server-side tools.
func (p *bodyParser) toolList() {
	if p.peek() != '[' {
		p.value(mkNone, mkNone)
		return
	}
	p.elements(func() {
		p.tools = true
		if p.peek() == '{' {
			p.object(mkNone, true)
			return
		}
		p.value(mkNone, mkNone)
	})
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
// exactly; text is estimated. It returns the number of prompts.
func (p *bodyParser) tokenInput() (prompts int64) {
	switch p.peek() {
	case '"':
		p.str(true, nil, nil)
		p.addTokens(p.cnt.take())
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
			p.addTokens(p.cnt.take())
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
	payload int64     // decoded bytes of base64 payloads under "data"
	first   int       // offset of the first payload's string, to count it as text
	more    int64     // characters of any further payload (a repeated "data")
	media   mediaKind // the most expensive kind a sibling media type names
}

// mediaKind is what a declared media type makes of a payload, cheapest first.
type mediaKind uint8

const (
	mediaUntyped mediaKind = iota // no media type: sized like audio
	mediaImage                    // image/*: ImageTokens
	mediaAV                       // audio/*, video/*: sized by bytes
	mediaText                     // anything else: counted as the text it is sent as
)

// mediaKindOf classifies a media type ("image/png", "text/plain; charset=utf-8").
func mediaKindOf(mime []byte) mediaKind {
	switch {
	case hasPrefixFoldBytes(mime, "image/"):
		return mediaImage
	case hasPrefixFoldBytes(mime, "audio/"), hasPrefixFoldBytes(mime, "video/"):
		return mediaAV
	}
	return mediaText
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
		p.addTokens(1)
		p.elements(func() { p.value(k, parent) })
	case c == '"':
		p.stringValue(k, parent, false)
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.number()
		for _, b := range p.data[start:p.pos] {
			p.cnt.ascii(b)
		}
		p.addTokens(p.cnt.take())
	case c == 't':
		p.literal("true")
		p.addTokens(1)
	case c == 'f':
		p.literal("false")
		p.addTokens(1)
	case c == 'n':
		p.literal("null")
		p.addTokens(1)
	default:
		p.fail("value expected")
	}
}

// object reads an object under member name self. At tool level it notes server-side tools.
func (p *bodyParser) object(self mkind, toolLevel bool) {
	if !p.openObject(true) {
		return
	}
	var st objState
	p.objectLoop(self, toolLevel, &st)
	// charged also when the body ended inside the object
	switch {
	case st.payload == 0:
	case st.media == mediaText:
		p.textAt(st.first)
		p.addTokens(st.more) // a token per character bounds any text
	default:
		p.chargeMedia(st.media == mediaImage, st.payload)
	}
}

// textAt counts the string that starts at off as text, then returns to where the parser was.
func (p *bodyParser) textAt(off int) {
	pos, err := p.pos, p.err
	p.pos = off
	p.str(true, nil, nil)
	p.addTokens(p.cnt.take() + 1)
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
			p.addTokens(p.cnt.take() + 1)
			if k == mkMime {
				st.media = max(st.media, mediaKindOf(v))
			}
			if k == mkType && toolLevel && isServerToolType(v) {
				p.external = true
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

func (p *bodyParser) chargeMedia(image bool, bytes int64) {
	t := p.set.imageTokens
	if !image {
		t = max(t, (bytes+p.set.mediaBytesPerToken-1)/p.set.mediaBytesPerToken)
	}
	p.addTokens(t)
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
		p.addTokens(p.set.imageTokens)
		if k != mkImageURL && parent != mkImageURL {
			p.external = true
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
	p.addTokens(p.cnt.take() + 1)
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
	kind := mediaKindOf(mime) // "data:;base64,..." is text/plain (RFC 2397)
	if kind == mediaText {
		p.str(true, nil, nil)
		p.addTokens(p.cnt.take() + 1)
		return true
	}
	n := p.str(false, nil, nil) - int64(comma+1)
	if hasSuffixFoldBytes(params, "base64") {
		n = n * 3 / 4
	}
	p.chargeMedia(kind == mediaImage, max(n, 0))
	return true
}

// str reads the string at p.pos (on its opening quote) and returns its decoded length in
// bytes. With text it feeds the characters to p.cnt; with capture it copies the decoded
// bytes into capture while they fit (p.capLen bytes; p.overflow reports the rest); with b64 it
// clears *b64 unless every character is in the base64 alphabets (standard, URL-safe, line
// breaks).
func (p *bodyParser) str(text bool, capture []byte, b64 *bool) int64 {
	p.overflow, p.capLen = false, 0
	p.pos++ // opening quote
	var n int64
	data := p.data
	plain := capture == nil && b64 == nil
	for p.pos < len(data) {
		c := data[p.pos]
		switch {
		case text && (c|0x20) >= 'a' && (c|0x20) <= 'z':
			// a run of letters (base64 characters all) is counted in one go
			k := p.cnt.letters(data[p.pos:])
			if capture != nil {
				p.keep(capture, data[p.pos:p.pos+k])
			}
			p.pos += k
			n += int64(k)
			continue
		case plain && !text:
			if k := plainRun(data[p.pos:]); k > 0 {
				p.pos += k
				n += int64(k)
				continue
			}
		case b64 != nil && *b64 && capture == nil && !text:
			if k := base64Run(data[p.pos:]); k > 0 {
				p.pos += k
				n += int64(k)
				continue
			}
		}
		var r rune
		size := 1
		switch {
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
		case c < utf8.RuneSelf:
			p.pos++
			n++
			if text {
				p.cnt.ascii(c)
			}
			if capture != nil {
				if p.capLen < len(capture) {
					capture[p.capLen] = c
					p.capLen++
				} else {
					p.overflow = true
				}
			}
			if b64 != nil && *b64 && !isBase64Char(c) {
				*b64 = false
			}
			continue
		default:
			r, size = utf8.DecodeRune(data[p.pos:])
			p.pos += size
		}
		// r came from an escape or a multi-byte sequence
		if r < utf8.RuneSelf {
			n++
			if text {
				p.cnt.ascii(byte(r))
			}
			if b64 != nil && *b64 && !isBase64Char(byte(r)) {
				*b64 = false
			}
		} else {
			n += int64(size)
			if text {
				p.cnt.rune(r, size)
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
