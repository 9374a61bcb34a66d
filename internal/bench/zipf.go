package bench

import (
	"math"
	mrand "math/rand/v2"
	"sort"
)

// Zipf picks indexes in [0, n) with P(k) proportional to 1/(k+1)^s, from a precomputed CDF
// (math/rand's Zipf binds one generator per sampler; this one works with any).
type Zipf struct{ cdf []float64 }

// NewZipf returns a sampler over n items with exponent s (s > 0).
func NewZipf(n int, s float64) *Zipf {
	cdf := make([]float64, n)
	var sum float64
	for k := range n {
		sum += 1 / math.Pow(float64(k+1), s)
		cdf[k] = sum
	}
	for k := range cdf {
		cdf[k] /= sum
	}
	return &Zipf{cdf: cdf}
}

// Pick returns an index.
func (z *Zipf) Pick(r *mrand.Rand) int {
	u := r.Float64()
	i := sort.SearchFloat64s(z.cdf, u)
	return min(i, len(z.cdf)-1)
}

// Share is the probability of index k.
func (z *Zipf) Share(k int) float64 {
	if k == 0 {
		return z.cdf[0]
	}
	return z.cdf[k] - z.cdf[k-1]
}
