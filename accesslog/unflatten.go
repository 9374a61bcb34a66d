package accesslog

import (
	"slices"
	"strings"
)

// unflatten rebuilds, for the price catalog's extractors (pricing.Catalog.ExtractUsage), the
// response fragment an entry's usage metadata describes: a nested JSON object from keys that
// are dot-joined JSON paths: {"usage.prompt_tokens": 12, "model": "gpt-4o"} → {"usage": {"prompt_tokens": 12},
// "model": "gpt-4o"}. A value that is already an object (a Lua filter's whole usage table) is
// deep-merged. Dotted keys are applied after object values, in sorted order, so a scalar at a
// dotted path wins over the same field inside an object value, and a deeper path replaces a
// scalar at its prefix. The input and its nested objects are not modified.
func unflatten(flat map[string]any) map[string]any {
	out := make(map[string]any, len(flat))
	keys := make([]string, 0, len(flat))
	for k := range flat {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	// Pass 1: plain keys; pass 2: dotted keys. Within a pass, sorted order.
	for pass := range 2 {
		for _, k := range keys {
			if strings.Contains(k, ".") != (pass == 1) {
				continue
			}
			setPath(out, k, flat[k])
		}
	}
	return out
}

// setPath sets the dot-joined path in dst to v, creating the objects on the way.
func setPath(dst map[string]any, path string, v any) {
	for {
		seg, rest, more := strings.Cut(path, ".")
		if !more {
			break
		}
		next, ok := dst[seg].(map[string]any)
		if !ok {
			next = make(map[string]any)
			dst[seg] = next
		}
		dst, path = next, rest
	}
	last := path
	if src, ok := v.(map[string]any); ok {
		cur, ok := dst[last].(map[string]any)
		if !ok {
			cur = make(map[string]any, len(src))
			dst[last] = cur
		}
		deepMerge(cur, src)
		return
	}
	dst[last] = v
}

func deepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			dm, ok := dst[k].(map[string]any)
			if !ok {
				dm = make(map[string]any, len(sm))
				dst[k] = dm
			}
			deepMerge(dm, sm)
			continue
		}
		dst[k] = v
	}
}
