package budget

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// TestParseSubject_OneRuleSet pins the rules every subject source shares (the admin API,
// purser apply, key owners and the request side all call ParseSubject).
func TestParseSubject_OneRuleSet(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{
		"global", "workload:spiffe://cluster.local/ns/ml/sa/bot", "user:alice@example.com",
		"team:ml", "org:acme-corp", "namespace:ml", "tag:blue", "route:chat", "key:key_abc",
		"user:Jörg", "user:алиса", "team:研究", "user:e\u0301", "tag:🚀", "user:a;b|c/d=e+f",
		"user:" + strings.Repeat("a", MaxSubjectLen-len("user:")),
	} {
		s, err := ParseSubject(ok)
		require.NoError(t, err, ok)
		require.Equal(t, ok, string(s), "accepted subjects are returned unchanged")
	}
	for bad, msg := range map[string]string{
		"":                  "subject is empty",
		"alice":             "want kind:id",
		"user:":             "empty id",
		"planet:earth":      `unknown kind "planet"`,
		"Team:ml":           `unknown kind "Team"`,
		"global:x":          `unknown kind "global"`,
		"user:a,b":          "id contains ','",
		"user:a b":          "whitespace (U+0020)",
		"user:a\u00a0b":     "whitespace (U+00A0)",
		"user:a\u3000b":     "whitespace (U+3000)",
		"user:a\nb":         "whitespace (U+000A)",
		"user:a\x00b":       "control character (U+0000)",
		"user:a\x7fb":       "control character (U+007F)",
		"user:a\u0085b":     "whitespace (U+0085)",
		"user:a\u202eb":     "format character (U+202E)",
		"user:a\u200db":     "format character (U+200D)",
		"user:\ufeffa":      "format character (U+FEFF)",
		"user:a\u2028b":     "whitespace (U+2028)",
		"user:a\ue000b":     "U+E000, which is not a printable character",
		"user:a\U000e0001":  "format character (U+E0001)",
		"user:\xff":         "not valid UTF-8",
		"user:\xed\xa0\x80": "not valid UTF-8", // an encoded surrogate
		"workload:web":      "workload id must be a SPIFFE id",
		"user:" + strings.Repeat("a", MaxSubjectLen): "longer than 512 bytes",
	} {
		_, err := ParseSubject(bad)
		require.ErrorContains(t, err, msg, "%q", bad)
	}
	require.NoError(t, CheckKind("team"))
	require.ErrorContains(t, CheckKind("role"), `unknown kind "role"`)
	require.Error(t, CheckKind("global"), "global is a subject, not a kind")
}

// FuzzParseSubject: an accepted subject is the input unchanged, fits the length cap, has a
// known kind and an id of printable characters without ',' or white space; parsing it
// again accepts it; errors never panic and never echo more than the length cap.
func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{"global", "user:alice@example.com", "workload:spiffe://td/ns/a/sa/b",
		"user:a,b", "user:a\u202eb", "user:\x00", "team:研究", "user:\xff\xfe", "tag:🚀\u200d🔥", ":", "user::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sub, err := ParseSubject(s)
		if err != nil {
			if len(err.Error()) > 4*MaxSubjectLen+256 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		if string(sub) != s {
			t.Fatalf("accepted %q as %q", s, sub)
		}
		if len(s) > MaxSubjectLen || !utf8.ValidString(s) {
			t.Fatalf("accepted an over-long or invalid subject %q", s)
		}
		if s == KindGlobal {
			return
		}
		kind, id, _ := strings.Cut(s, ":")
		if CheckKind(kind) != nil || id == "" {
			t.Fatalf("accepted %q with kind %q", s, kind)
		}
		for _, r := range id {
			if r == ',' || unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || !unicode.IsPrint(r) {
				t.Fatalf("accepted %q containing %U", s, r)
			}
		}
		if again, err := ParseSubject(string(sub)); err != nil || again != sub {
			t.Fatalf("not stable: %q -> %q, %v", s, again, err)
		}
	})
}
