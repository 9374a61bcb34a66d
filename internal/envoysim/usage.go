package envoysim

import (
	"bytes"
	"encoding/json"
	"mime"
	"strconv"
	"strings"

	jsonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/content_parsers/json/v3"
	j2mv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// This file imitates the two response-side metadata filters of reference section 5:
// json_to_metadata (5.1: holds the whole JSON body, then applies every rule) and
// sse_to_metadata with the JSON content parser (5.2: per event, never holding the stream,
// on_present at once, on_missing/on_error deferred to a clean end of stream). The request path
// runs them incrementally on the live response; ResponseMetadata runs them on a whole one
// (internal/fakellm's envoyrules_test.go checks envoy.yaml's rules against the fake with it).

// metadataWriter stores one value of dynamic metadata.
type metadataWriter func(ns, key string, v *structpb.Value, preserveExisting bool)

// ResponseMetadata is the dynamic metadata, by namespace, that the configured json_to_metadata
// and sse_to_metadata filters write for a complete response with this content type and body
// (a cut response: the bytes that arrived, ending cleanly).
func (c *Config) ResponseMetadata(contentType string, body []byte) map[string]*structpb.Struct {
	md := map[string]*structpb.Struct{}
	set := func(ns, key string, v *structpb.Value, preserve bool) { setMetadata(md, ns, key, v, preserve) }
	if c.JSONRules != nil {
		c.applyJSONRules(contentType, body, set)
	}
	if c.hasSSE && isSSE(contentType) {
		sse := newSSEState(c.SSERules, c.SSEMaxEventSize, set)
		sse.feed(body)
		sse.end()
	}
	return md
}

// jsonContentTypeAllowed: allow_content_types (exact; default application/json) or
// allow_content_types_regex (reference 5.1).
func (c *Config) jsonContentTypeAllowed(ct string) bool {
	r := c.JSONRules
	if r == nil {
		return false
	}
	allowed := r.GetAllowContentTypes()
	if len(allowed) == 0 && c.jsonCT == nil {
		allowed = []string{"application/json"}
	}
	for _, a := range allowed {
		if ct == a {
			return true
		}
	}
	if ct == "" && r.GetAllowEmptyContentType() {
		return true
	}
	return c.jsonCT != nil && c.jsonCT.MatchString(ct)
}

// applyJSONRules runs json_to_metadata's response rules on a complete body.
func (c *Config) applyJSONRules(ct string, body []byte, set metadataWriter) {
	rules := c.JSONRules.GetRules()
	fire := func(kv *j2mv3.JsonToMetadata_KeyValuePair, v any) {
		if kv == nil {
			return
		}
		if kv.GetValue() != nil { // a configured value wins over the extracted one
			set(nonEmpty(kv.GetMetadataNamespace(), filterJSON), kv.GetKey(), kv.GetValue(), kv.GetPreserveExistingMetadataValue())
			return
		}
		if pv, ok := convert(kv.GetType(), v, false); ok {
			set(nonEmpty(kv.GetMetadataNamespace(), filterJSON), kv.GetKey(), pv, kv.GetPreserveExistingMetadataValue())
		}
	}
	onError := func() {
		for _, r := range rules {
			fire(r.GetOnError(), nil)
		}
	}
	if !c.jsonContentTypeAllowed(ct) {
		onError() // mismatched content type (stat resp_mismatched_content_type)
		return
	}
	if len(bytes.TrimSpace(body)) == 0 {
		for _, r := range rules {
			fire(r.GetOnMissing(), nil)
		}
		return
	}
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		onError() // not a JSON object
		return
	}
	for _, r := range rules {
		v, found := walk(doc, r.GetSelectors())
		switch {
		case !found:
			fire(r.GetOnMissing(), nil)
		case r.GetOnPresent() == nil:
		default:
			kv := r.GetOnPresent()
			if kv.GetValue() == nil {
				if _, ok := convert(kv.GetType(), v, false); !ok {
					fire(r.GetOnError(), nil) // e.g. an object where a scalar was expected
					continue
				}
			}
			fire(kv, v)
		}
	}
}

// walk follows selectors through JSON objects; a null or absent key is "missing".
func walk(doc map[string]any, sel []*j2mv3.JsonToMetadata_Selector) (any, bool) {
	var cur any = doc
	for _, s := range sel {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		v, ok := obj[s.GetKey()]
		if !ok || v == nil {
			return nil, false
		}
		cur = v
	}
	return cur, len(sel) > 0
}

// convert applies KeyValuePair.type like Envoy: NUMBER from numbers, numeric strings and
// bools; STRING from scalars; PROTOBUF_VALUE as is. json_to_metadata cannot store an object;
// the SSE JSON parser stores it serialized.
func convert(t j2mv3.JsonToMetadata_ValueType, v any, sse bool) (*structpb.Value, bool) {
	switch v.(type) {
	case map[string]any, []any:
		if !sse {
			return nil, false
		}
		b, _ := json.Marshal(v)
		v = string(b)
	}
	switch t {
	case j2mv3.JsonToMetadata_NUMBER:
		switch x := v.(type) {
		case float64:
			return structpb.NewNumberValue(x), true
		case bool:
			if x {
				return structpb.NewNumberValue(1), true
			}
			return structpb.NewNumberValue(0), true
		case string:
			f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
			if err != nil {
				return nil, false
			}
			return structpb.NewNumberValue(f), true
		}
	case j2mv3.JsonToMetadata_STRING:
		switch x := v.(type) {
		case string:
			return structpb.NewStringValue(x), x != ""
		case float64:
			return structpb.NewStringValue(strconv.FormatFloat(x, 'f', -1, 64)), true
		case bool:
			return structpb.NewStringValue(strconv.FormatBool(x)), true
		}
	default:
		pv, err := structpb.NewValue(v)
		return pv, err == nil
	}
	return nil, false
}

// isSSE: sse_to_metadata matches the media type text/event-stream (reference 5.2).
func isSSE(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && strings.EqualFold(mt, "text/event-stream")
}

// sseState parses one response's SSE stream incrementally.
type sseState struct {
	rules   []*jsonv3.JsonContentParser_RuleConfig
	maxSize uint32
	set     metadataWriter

	line     []byte // the current line so far
	lastCR   bool   // the previous chunk ended with CR (a following LF belongs to it)
	data     []string
	hasData  bool
	evSize   int
	tooLarge bool

	matches []int // on_present count per rule
	errors  int   // parse errors (JSON) seen
}

func newSSEState(rules []*jsonv3.JsonContentParser_RuleConfig, maxSize uint32, set metadataWriter) *sseState {
	return &sseState{rules: rules, maxSize: maxSize, set: set, matches: make([]int, len(rules))}
}

// feed consumes a chunk of the response body: lines end with CRLF, LF or CR; a blank line
// ends an event; "data:" lines are joined with "\n" (one leading space dropped); lines
// starting with ":" are comments.
func (s *sseState) feed(b []byte) {
	for _, c := range b {
		if s.lastCR {
			s.lastCR = false
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\r':
			s.lastCR = true
			s.endLine()
		case '\n':
			s.endLine()
		default:
			s.line = append(s.line, c)
			s.evSize++
			if s.maxSize > 0 && s.evSize > int(s.maxSize) && !s.tooLarge {
				s.tooLarge = true
			}
		}
	}
}

func (s *sseState) endLine() {
	line := s.line
	s.line = s.line[:0]
	s.evSize++
	if len(line) == 0 {
		s.dispatch()
		return
	}
	if s.tooLarge || line[0] == ':' {
		return
	}
	field, value, _ := strings.Cut(string(line), ":")
	value = strings.TrimPrefix(value, " ")
	if field == "data" {
		s.data = append(s.data, value)
		s.hasData = true
	}
}

func (s *sseState) dispatch() {
	defer func() { s.data, s.hasData, s.evSize, s.tooLarge = s.data[:0], false, 0, false }()
	if s.tooLarge || !s.hasData { // event_too_large, no_data_field
		return
	}
	var doc map[string]any
	if json.Unmarshal([]byte(strings.Join(s.data, "\n")), &doc) != nil {
		s.errors++ // parse_error, e.g. OpenAI's "data: [DONE]"
		return
	}
	for i, rc := range s.rules {
		// stop_processing_after_matches: 1 stops a rule after its first match; 0 keeps
		// evaluating, so the last match wins.
		if rc.GetStopProcessingAfterMatches() == 1 && s.matches[i] > 0 {
			continue
		}
		v, ok := walk(doc, rc.GetRule().GetSelectors())
		if !ok {
			continue
		}
		kv := rc.GetRule().GetOnPresent()
		if kv == nil {
			continue
		}
		pv := kv.GetValue()
		if pv == nil {
			var conv bool
			if pv, conv = convert(kv.GetType(), v, true); !conv {
				s.errors++
				continue
			}
		}
		s.matches[i]++
		s.set(nonEmpty(kv.GetMetadataNamespace(), filterSSE), kv.GetKey(), pv, kv.GetPreserveExistingMetadataValue())
	}
}

// end is the clean end of the stream: a last event without its blank line is dispatched,
// then on_error (if any error was seen) or on_missing fires for rules that never matched.
// A reset stream never gets here (reference 5.2: no fallback on reset).
func (s *sseState) end() {
	if len(s.line) > 0 {
		s.endLine()
	}
	if s.hasData || s.tooLarge {
		s.dispatch()
	}
	for i, rc := range s.rules {
		if s.matches[i] > 0 {
			continue
		}
		kv := rc.GetRule().GetOnMissing()
		if s.errors > 0 && rc.GetRule().GetOnError() != nil {
			kv = rc.GetRule().GetOnError()
		}
		if kv == nil || kv.GetValue() == nil {
			continue
		}
		s.set(nonEmpty(kv.GetMetadataNamespace(), filterSSE), kv.GetKey(), kv.GetValue(), kv.GetPreserveExistingMetadataValue())
	}
}
