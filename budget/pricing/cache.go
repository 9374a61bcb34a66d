package pricing

import (
	"sync"
	"sync/atomic"
)

// hotCacheLimit bounds each lookup cache. Keys come from requests (model names), so the cache
// must not grow without bound; when full it is cleared and refills with what is hot.
const hotCacheLimit = 1 << 14

// hotCache is a concurrency-safe memo with lock-free reads.
type hotCache[K comparable, V any] struct {
	m sync.Map
	n atomic.Int64
}

func (h *hotCache[K, V]) get(k K) (V, bool) {
	v, ok := h.m.Load(k)
	if !ok {
		var zero V
		return zero, false
	}
	return v.(V), true
}

func (h *hotCache[K, V]) put(k K, v V) {
	if h.n.Add(1) > hotCacheLimit {
		h.m.Clear()
		h.n.Store(1)
	}
	h.m.Store(k, v)
}
