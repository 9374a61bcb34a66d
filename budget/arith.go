package budget

import (
	"math/big"
	"math/bits"
)

// cmpProducts compares a*b with c*d exactly, without overflow: -1, 0 or +1.
func cmpProducts(a, b, c, d int64) int {
	if a >= 0 && b >= 0 && c >= 0 && d >= 0 {
		h1, l1 := bits.Mul64(uint64(a), uint64(b))
		h2, l2 := bits.Mul64(uint64(c), uint64(d))
		switch {
		case h1 != h2:
			return cmpU(h1, h2)
		default:
			return cmpU(l1, l2)
		}
	}
	x := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
	y := new(big.Int).Mul(big.NewInt(c), big.NewInt(d))
	return x.Cmp(y)
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// mulDivCeil returns ceil(a*b/c) for a, b >= 0 and c > 0, saturating at MaxInt64.
func mulDivCeil(a, b, c int64) int64 {
	x := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
	x.Add(x, big.NewInt(c-1))
	x.Quo(x, big.NewInt(c))
	if !x.IsInt64() {
		return 1<<63 - 1
	}
	return x.Int64()
}

// remainderNonZero reports whether a*b is not a multiple of c (c > 0).
func remainderNonZero(a, b, c int64) bool {
	x := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
	return x.Rem(x, big.NewInt(c)).Sign() != 0
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
