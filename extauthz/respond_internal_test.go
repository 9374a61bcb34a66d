package extauthz

import (
	"strings"
	"testing"
)

// carriesPurserKeyRef is the definition: some token, split at ',', ' ' and '\t', starts with
// the key prefix.
func carriesPurserKeyRef(v string) bool {
	for _, tok := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if strings.HasPrefix(tok, keyPrefix) {
			return true
		}
	}
	return false
}

func TestCarriesPurserKey_MatchesDefinition(t *testing.T) {
	t.Parallel()
	cases := []string{"", "pk_", "pk_abc", "Bearer pk_abc", "sk-1, Bearer pk_abc", "sk-1,pk_x", "xpk_abc",
		"Bearer xpk_abc", "\tpk_a", "pk", "p k_", ",,,", "sk-1", "Bearer\tpk_", "a,pk_", "pk_,a", "ápk_ pk_"}
	// Every string of up to 5 symbols from an alphabet that can form and break the prefix.
	alphabet := []string{"p", "k", "_", ",", " ", "\t", "x"}
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		cases = append(cases, prefix)
		if n == 0 {
			return
		}
		for _, a := range alphabet {
			gen(prefix+a, n-1)
		}
	}
	gen("", 5)
	for _, c := range cases {
		if got, want := carriesPurserKey(c), carriesPurserKeyRef(c); got != want {
			t.Fatalf("carriesPurserKey(%q) = %v, want %v (FieldsFunc definition)", c, got, want)
		}
	}
}
