package request

import "bytes"

// Content: every value below the top-level members (body.go), counted as text unless it is
// media (an image, a document, a file reference), which the rules below recognise by member
// names, media types and block types.

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
