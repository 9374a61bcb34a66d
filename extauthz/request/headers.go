package request

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// headers gives case-insensitive access to the request headers, whichever way Envoy sent
// them: the headers map (keys lower-cased by Envoy, duplicates joined with ","), or the
// header_map list of encode_raw_headers (raw values, duplicates kept). Both are folded into
// one lower-cased map with duplicates joined by ",", so the two encodings read the same. The
// Envoy map is used as is (no copy) when its keys are already lower case.
type headers struct {
	m map[string]string
}

func newHeaders(h *authv3.AttributeContext_HttpRequest) headers {
	src := h.GetHeaders()
	raw := h.GetHeaderMap().GetHeaders()
	if len(raw) == 0 && allLower(src) {
		return headers{m: src}
	}
	m := make(map[string]string, len(src)+len(raw))
	for k, v := range src {
		addHeader(m, lower(k), v)
	}
	for _, hv := range raw {
		if hv == nil {
			continue
		}
		v := hv.GetValue()
		if len(hv.GetRawValue()) > 0 {
			v = string(hv.GetRawValue())
		}
		addHeader(m, lower(hv.GetKey()), v)
	}
	return headers{m: m}
}

func addHeader(m map[string]string, k, v string) {
	if old, ok := m[k]; ok {
		m[k] = old + "," + v
		return
	}
	m[k] = v
}

func (h *headers) get(name string) string { return h.m[name] }

func allLower(m map[string]string) bool {
	for k := range m {
		if hasUpper(k) {
			return false
		}
	}
	return true
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 'A' && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// lower lower-cases ASCII letters, allocating only when s has upper-case ones.
func lower(s string) string {
	if !hasUpper(s) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
