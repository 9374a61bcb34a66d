package budget

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseScope(t *testing.T) {
	t.Parallel()
	good, err := ParseScope([]string{"team:ml", "user:*", "team:ml-*", "team:ml", "org:acme/research"})
	require.NoError(t, err)
	require.Equal(t, Scope{"team:ml", "user:*", "team:ml-*", "org:acme/research"}, good, "duplicates removed, order kept")

	bad := map[string]string{
		"global":     "not global or key: subjects",
		"key:key_ab": "not global or key: subjects",
		"key:*":      "unsupported kind",
		"*":          "must start with a kind",
		"team":       "want kind:id",
		"team:a*b*":  "'*' may only end an entry",
		"planet:*":   "unknown or unsupported kind",
		"team:a b*":  "whitespace",
		"":           "subject is empty",
	}
	for entry, msg := range bad {
		_, err := ParseScope([]string{entry})
		require.ErrorContains(t, err, msg, "entry %q", entry)
	}
	_, err = ParseScope(make([]string, MaxScopeEntries+1))
	require.ErrorContains(t, err, "at most 100 entries")
}

func TestScope_Covers(t *testing.T) {
	t.Parallel()
	sc := Scope{"team:ml", "user:*", "team:web-*"}
	cases := []struct {
		subject Subject
		owners  []Subject
		want    bool
	}{
		{"team:ml", nil, true},
		{"team:ml/nlp", nil, true},    // below, after a '/'
		{"team:ml/nlp/x", nil, true},  // deeper
		{"team:mlops", nil, false},    // a plain prefix is not below
		{"team:ml-infra", nil, false}, // neither is a '-'
		{"user:alice", nil, true},
		{"team:web-shop", nil, true},
		{"team:web", nil, false},
		{"org:acme", nil, false},
		{"global", nil, false},
		{"key:key_a", []Subject{"team:ml", "user:bob"}, true},
		{"key:key_b", []Subject{"team:ml", "org:acme"}, false}, // also bills another org
		{"key:key_c", nil, false},                              // no owners: only an admin's
	}
	for _, c := range cases {
		require.Equal(t, c.want, sc.Covers(c.subject, c.owners), "%s owned by %v", c.subject, c.owners)
	}
}

func TestWider(t *testing.T) {
	t.Parallel()
	owners := []Subject{"team:ml/nlp", "user:alice"}
	cases := []struct {
		w, s Subject
		want bool
	}{
		{"global", "team:ml", true},
		{"global", "global", false},
		{"team:ml", "team:ml/nlp", true},
		{"team:ml", "team:ml", false},
		{"team:ml/nlp", "team:ml", false},
		{"team:ml", "team:mlops", false},
		{"org:ml", "team:ml/nlp", false}, // another kind is never below by its id
		{"team:ml/nlp", "key:key_a", true},
		{"team:ml", "key:key_a", true}, // wider than an owner
		{"user:alice", "key:key_a", true},
		{"user:bob", "key:key_a", false},
	}
	for _, c := range cases {
		require.Equal(t, c.want, Wider(c.w, c.s, owners), "Wider(%s, %s)", c.w, c.s)
	}
	require.Equal(t, []Subject{"team:ml/nlp", "team:ml", "user:alice", "global"}, widerSubjects("key:key_a", owners))
	require.Equal(t, []Subject{"org:a/b", "org:a", "global"}, widerSubjects("org:a/b/c", nil))
	for _, w := range widerSubjects("key:key_a", owners) {
		require.True(t, Wider(w, "key:key_a", owners), "widerSubjects lists only wider subjects: %s", w)
	}
}

func TestNominalLength(t *testing.T) {
	t.Parallel()
	order := []WindowSpec{{Kind: Minute}, {Kind: Rolling, Rolling: 10 * time.Minute}, {Kind: Hour}, {Kind: Day},
		{Kind: Week}, {Kind: Month}, {Kind: Quarter}, {Kind: Year}, {Kind: Lifetime}}
	for i := 1; i < len(order); i++ {
		require.Less(t, nominalLength(order[i-1]), nominalLength(order[i]), "%s before %s", order[i-1].Kind, order[i].Kind)
	}
}

// FuzzParseScope: any entry list either fails or yields entries that Covers treats
// consistently (an exact entry covers itself).
func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"team:ml", "user:*", "team:ml-*", "key:x", "global", "*", "team:\x00", "org:a/b", "tag:%_\\*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, entry string) {
		sc, err := ParseScope([]string{entry})
		if err != nil {
			return
		}
		require.Len(t, sc, 1)
		if !strings.HasSuffix(entry, "*") {
			require.True(t, sc.Covers(Subject(entry), nil), "an exact entry covers itself: %q", entry)
			require.True(t, sc.Covers(Subject(entry+"/x"), nil))
		}
		require.False(t, sc.Covers(Global, nil), "no scope covers global")
		require.NotPanics(t, func() { _ = sc.filter() })
	})
}
