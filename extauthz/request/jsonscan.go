package request

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// The JSON lexer under the body parser (body.go).
//
// scanner reads JSON text in one pass and keeps going as far as the text goes: a truncated
// body ends in errJSONEOF, any other syntax error in a *jsonError, and the caller uses what
// it read up to there. It matches nothing by name and knows nothing of what a request's
// members mean: it reads values, objects and arrays, decodes strings (escapes, surrogate
// pairs, invalid UTF-8), optionally copying them into a caller's buffer without allocating,
// and sums the weights of their characters (bound.go) for the caller to count.

// maxDepth bounds the nesting of objects and arrays.
const maxDepth = 256

var errJSONEOF = errors.New("unexpected end of JSON input")

// jsonError is a syntax error at a byte offset. It never quotes body content.
type jsonError struct {
	off int
	msg string
}

func (e *jsonError) Error() string { return fmt.Sprintf("invalid JSON at byte %d: %s", e.off, e.msg) }

// scanner reads one JSON text. Its zero value reads nothing: set data.
type scanner struct {
	data  []byte
	pos   int
	depth int
	err   error
	// captured length and overflow flag of the last str call
	capLen   int
	overflow bool
	// units sums the weights of the characters of the strings read as text (bound.go) since
	// the last take; nlExtra is added for each line break among them.
	units   int64
	nlExtra int64
}

// take returns the weights summed since the last take and resets the sum.
func (s *scanner) take() int64 {
	n := s.units
	s.units = 0
	return n
}

func (s *scanner) fail(msg string) {
	if s.err == nil {
		s.err = &jsonError{off: s.pos, msg: msg}
	}
}

func (s *scanner) eof() {
	if s.err == nil {
		s.err = errJSONEOF
	}
}

func (s *scanner) ws() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek skips white space and returns the next byte, or 0 (and an EOF error) at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.pos >= len(s.data) {
		s.eof()
		return 0
	}
	return s.data[s.pos]
}

func (s *scanner) enter() bool {
	if s.depth >= maxDepth {
		s.fail(fmt.Sprintf("nesting deeper than %d", maxDepth))
		return false
	}
	s.depth++
	return true
}

// Reading an object, on its '{':
//
//	if !s.enterObject() { return }
//	for more := s.firstMember(); more; more = s.nextMember() {
//		key, ok := s.key(buf, text)
//		if !ok || !s.colon() { return }
//		// read the value
//	}

// enterObject enters the object on its '{'. It is false when the object is nested too deeply.
func (s *scanner) enterObject() bool {
	if !s.enter() {
		return false
	}
	s.pos++
	return true
}

// firstMember reports whether the object just opened has a member; an empty one is closed.
func (s *scanner) firstMember() bool {
	if s.peek() == '}' {
		s.pos++
		s.depth--
		return false
	}
	return s.err == nil
}

// nextMember reads what follows a member's value: true at ',' (another member follows),
// false at '}' (the object is closed) or on an error.
func (s *scanner) nextMember() bool {
	if s.err != nil {
		return false
	}
	switch s.peek() {
	case ',':
		s.pos++
		return true
	case '}':
		s.pos++
		s.depth--
		return false
	}
	s.fail("',' or '}' expected")
	return false
}

// key reads a member's key, adding its characters' weights to units when text. The key is
// decoded into buf; it is nil when longer than buf (so it matches no known name). ok is false
// on a syntax error.
func (s *scanner) key(buf []byte, text bool) (key []byte, ok bool) {
	if s.peek() != '"' {
		s.fail("object key expected")
		return nil, false
	}
	s.str(text, buf, nil)
	if !s.overflow {
		key = buf[:s.capLen]
	}
	return key, true
}

// colon reads the ':' after a key.
func (s *scanner) colon() bool {
	if s.peek() != ':' {
		s.fail("':' expected")
		return false
	}
	s.pos++
	return true
}

// elements reads an array, calling fn positioned at each element.
func (s *scanner) elements(fn func()) {
	if !s.enter() {
		return
	}
	s.pos++
	if s.peek() == ']' {
		s.pos++
		s.depth--
		return
	}
	for s.err == nil {
		fn()
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			s.depth--
			return
		default:
			s.fail("',' or ']' expected")
			return
		}
	}
}

// str reads the string at s.pos (on its opening quote) and returns its decoded length in
// bytes. With text it adds the characters' weights to s.units; with capture it copies the
// decoded bytes into capture while they fit (s.capLen bytes; s.overflow reports the rest);
// with b64 it clears *b64 unless every character is in the base64 alphabets (standard,
// URL-safe, line breaks).
func (s *scanner) str(text bool, capture []byte, b64 *bool) int64 {
	s.overflow, s.capLen = false, 0
	s.pos++ // opening quote
	var n int64
	data := s.data
	for s.pos < len(data) {
		if k := plainRun(data[s.pos:]); k > 0 {
			// a run of plain ASCII (no quote, backslash, control or non-ASCII byte): one
			// token per byte at most
			seg := data[s.pos : s.pos+k]
			if text {
				s.units += int64(k)
			}
			if capture != nil {
				s.keep(capture, seg)
			}
			if b64 != nil && *b64 && base64Run(seg) < k {
				*b64 = false
			}
			s.pos += k
			n += int64(k)
			continue
		}
		var r rune
		var size int
		switch c := data[s.pos]; {
		case c == '"':
			s.pos++
			return n
		case c == '\\':
			var ok bool
			r, size, ok = s.escape()
			if !ok {
				return n
			}
		case c < 0x20:
			s.fail("control character in string")
			return n
		default:
			r, size = utf8.DecodeRune(data[s.pos:])
			s.pos += size
		}
		// r came from an escape or a multi-byte sequence
		if r < utf8.RuneSelf {
			n++
			if text {
				s.units++
				if r == '\n' {
					s.units += s.nlExtra
				}
			}
			if b64 != nil && *b64 && !isBase64Char(byte(r)) {
				*b64 = false
			}
		} else {
			n += int64(size)
			if text {
				s.units += runeWeight(r, size)
			}
			if b64 != nil {
				*b64 = false
			}
		}
		if capture != nil {
			if l := utf8.RuneLen(r); l > 0 && s.capLen+l <= len(capture) {
				s.capLen += utf8.EncodeRune(capture[s.capLen:], r)
			} else {
				s.overflow = true
			}
		}
	}
	s.eof()
	return n
}

// keep copies b into capture after what it holds, while it fits; s.overflow reports the rest.
func (s *scanner) keep(capture, b []byte) {
	k := copy(capture[s.capLen:], b)
	s.capLen += k
	if k < len(b) {
		s.overflow = true
	}
}

// escape decodes the escape sequence at s.pos and advances past it. size is the UTF-8
// length the character counts for (3 for a lone surrogate).
func (s *scanner) escape() (r rune, size int, ok bool) {
	data := s.data
	if s.pos+1 >= len(data) {
		s.pos = len(data)
		s.eof()
		return 0, 0, false
	}
	switch e := data[s.pos+1]; e {
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
		r1, ok1 := s.hex4(s.pos + 2)
		if !ok1 {
			return 0, 0, false
		}
		s.pos += 6
		if r1 >= 0xd800 && r1 < 0xdc00 && s.pos+6 <= len(data) && data[s.pos] == '\\' && data[s.pos+1] == 'u' {
			if r2, ok2 := s.hex4(s.pos + 2); ok2 && r2 >= 0xdc00 && r2 < 0xe000 {
				s.pos += 6
				return 0x10000 + (r1-0xd800)<<10 + (r2 - 0xdc00), 4, true
			}
			if s.err != nil {
				return 0, 0, false
			}
		}
		if r1 >= 0xd800 && r1 < 0xe000 {
			return utf8.RuneError, 3, true // lone surrogate
		}
		return r1, max(utf8.RuneLen(r1), 1), true
	default:
		s.fail("invalid escape")
		return 0, 0, false
	}
	s.pos += 2
	return r, 1, true
}

func (s *scanner) hex4(at int) (rune, bool) {
	if at+4 > len(s.data) {
		s.pos = len(s.data)
		s.eof()
		return 0, false
	}
	var r rune
	for _, c := range s.data[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c|0x20 >= 'a' && c|0x20 <= 'f':
			r = r<<4 | rune(c|0x20-'a'+10)
		default:
			s.pos = at
			s.fail("invalid \\u escape")
			return 0, false
		}
	}
	return r, true
}

// number reads a JSON number. A number that reaches the end of the body is incomplete.
func (s *scanner) number() {
	data := s.data
	i := s.pos
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
		s.pos = i
		s.eof()
		return
	case data[i] == '0':
		i++
	case digits() == 0:
		s.pos = i
		s.fail("invalid number")
		return
	}
	if i < len(data) && data[i] == '.' {
		i++
		if digits() == 0 {
			s.pos = i
			if i >= len(data) {
				s.eof()
			} else {
				s.fail("invalid number")
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
			s.pos = i
			if i >= len(data) {
				s.eof()
			} else {
				s.fail("invalid number")
			}
			return
		}
	}
	s.pos = i
	if i >= len(data) {
		s.eof()
	}
}

func (s *scanner) literal(lit string) {
	rest := s.data[s.pos:]
	if len(rest) < len(lit) {
		if string(rest) == lit[:len(rest)] {
			s.pos = len(s.data)
			s.eof()
			return
		}
		s.fail("invalid literal")
		return
	}
	if string(rest[:len(lit)]) != lit {
		s.fail("invalid literal")
		return
	}
	s.pos += len(lit)
}

// skip validates a value without counting it.
func (s *scanner) skip() {
	if s.err != nil {
		return
	}
	switch c := s.peek(); {
	case c == 0:
	case c == '{':
		if !s.enterObject() {
			return
		}
		for more := s.firstMember(); more; more = s.nextMember() {
			if _, ok := s.key(nil, false); !ok || !s.colon() {
				return
			}
			s.skip()
		}
	case c == '[':
		s.elements(s.skip)
	case c == '"':
		s.str(false, nil, nil)
	case c == '-' || c >= '0' && c <= '9':
		s.number()
	case c == 't':
		s.literal("true")
	case c == 'f':
		s.literal("false")
	case c == 'n':
		s.literal("null")
	default:
		s.fail("value expected")
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
