package budget

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDefinition_Build(t *testing.T) {
	t.Parallel()
	valid := Definition{Name: "ml monthly", Subject: "team:ml", Unit: "usd", Limit: 100_000_000, Window: "month",
		TimeZone: "Europe/Berlin", AnchorDay: 31, Hard: true, WarnAt: []int{80, 50}, Models: []string{"gpt-4o*"},
		Endpoints: []string{"/v1/chat/*"}}
	b, err := valid.Build()
	require.NoError(t, err)
	require.Equal(t, Subject("team:ml"), b.Subject)
	require.Equal(t, []int{50, 80}, b.WarnAt)
	require.Equal(t, "Europe/Berlin", b.Window.Location.String())
	require.Equal(t, 31, b.Window.AnchorDay)

	rolling := valid
	rolling.Window, rolling.AnchorDay = "72h", 0
	rb, err := rolling.Build()
	require.NoError(t, err)
	require.Equal(t, Rolling, rb.Window.Kind)
	require.Equal(t, "72h0m0s", rb.WindowString())

	cases := map[string]struct {
		mut   func(d *Definition)
		field string
		msg   string
	}{
		"NegativeLimit":     {func(d *Definition) { d.Limit = -1 }, "limit", "limit: must not be negative"},
		"UnknownTimeZone":   {func(d *Definition) { d.TimeZone = "Mars/Olympus" }, "timezone", `timezone: "Mars/Olympus" is not a known IANA time zone`},
		"BadGlob":           {func(d *Definition) { d.Models = []string{"gpt-[4"} }, "models[0]", `models[0]: pattern "gpt-[4": unclosed '[' at byte 4`},
		"EmptySubject":      {func(d *Definition) { d.Subject = "" }, "subject", "subject: subject is empty"},
		"UnknownKind":       {func(d *Definition) { d.Subject = "tenant:x" }, "subject", `unknown kind "tenant"`},
		"BadUnit":           {func(d *Definition) { d.Unit = "eur" }, "unit", `unit: must be usd, tokens or requests, got "eur"`},
		"BadWindow":         {func(d *Definition) { d.Window = "monthly" }, "window", `window "monthly": want minute, hour, day, week, month`},
		"AnchorOnWeek":      {func(d *Definition) { d.Window = "week" }, "anchor_day", "anchor day applies to month"},
		"WarnOver":          {func(d *Definition) { d.WarnAt = []int{0} }, "warn_at", "warn_at: 0 is not a percentage"},
		"EndpointNoSlash":   {func(d *Definition) { d.Endpoints = []string{"v1/chat"} }, "endpoints[0]", "must start with / or *"},
		"NoName":            {func(d *Definition) { d.Name = " " }, "name", "name: is required"},
		"WorkloadNotSpiffe": {func(d *Definition) { d.Subject = "workload:web" }, "subject", "workload id must be a SPIFFE id"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := valid
			c.mut(&d)
			_, err := d.Build()
			require.Error(t, err)
			var fe *FieldError
			require.True(t, errors.As(err, &fe), "want a FieldError, got %T", err)
			require.Equal(t, c.field, fe.Field)
			require.Contains(t, err.Error(), c.msg)
		})
	}
}

func TestBudget_Applies(t *testing.T) {
	t.Parallel()
	b, err := Definition{Name: "x", Subject: "team:ml", Limit: 1, Window: "day", Models: []string{"gpt-4o*", "claude-*"},
		Endpoints: []string{"/v1/chat/*"}, Route: map[string]string{"route": "prod"}}.Build()
	require.NoError(t, err)
	prod := map[string]string{"route": "prod"}
	require.True(t, b.Applies(Target{Model: "gpt-4o-mini", Path: "/v1/chat/completions", Route: prod}))
	require.True(t, b.Applies(Target{Model: "claude-sonnet-4", Path: "/v1/chat/x", Route: prod}))
	require.False(t, b.Applies(Target{Model: "gpt-3.5", Path: "/v1/chat/completions", Route: prod}))
	require.False(t, b.Applies(Target{Model: "gpt-4o", Path: "/v1/embeddings", Route: prod}))
	require.False(t, b.Applies(Target{Model: "gpt-4o", Path: "/v1/chat/completions", Route: map[string]string{"route": "dev"}}))
	open, err := Definition{Name: "y", Subject: "global", Limit: 1, Window: "day"}.Build()
	require.NoError(t, err)
	require.True(t, open.Applies(Target{}))
}

func TestGlob(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pat, s string
		want   bool
	}{
		{"gpt-4o*", "gpt-4o", true},
		{"gpt-4o*", "gpt-4o-mini-2024", true},
		{"gpt-4o*", "gpt-4", false},
		{"*", "openai/gpt-4o", true},
		{"openai/*", "openai/gpt-4o", true},
		{"*/gpt-4o", "azure/deploy/gpt-4o", true},
		{"gpt-?o", "gpt-4o", true},
		{"gpt-[34]*", "gpt-3.5", true},
		{"gpt-[!34]*", "gpt-3.5", false},
		{"gpt-[0-9]o", "gpt-4o", true},
		{`a\*b`, "a*b", true},
		{`a\*b`, "axb", false},
		{"*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
		{"claude", "claude", true},
		{"claude", "Claude", false},
	}
	for _, c := range cases {
		g, err := ParseGlob(c.pat)
		require.NoError(t, err, c.pat)
		require.Equal(t, c.want, g.Match(c.s), "%q vs %q", c.pat, c.s)
	}
	for _, bad := range []string{"", "[", "a]", "[]", `x\`} {
		_, err := ParseGlob(bad)
		require.Error(t, err, "%q", bad)
	}
}

func FuzzGlob(f *testing.F) {
	for _, s := range []string{"gpt-4o*", "[a-z]?", `\*`, "[!x]*y", "***"} {
		f.Add(s, "gpt-4o-mini")
	}
	f.Fuzz(func(t *testing.T, pat, s string) {
		g, err := ParseGlob(pat)
		if err != nil {
			return
		}
		first := g.Match(s) // must not panic
		if second := g.Match(s); first != second {
			t.Fatalf("ParseGlob(%q).Match(%q): %t, then %t: want the same answer twice", pat, s, first, second)
		}
	})
}

func TestParseSubject(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"global", "user:alice", "team:ml", "workload:spiffe://cluster.local/ns/ml/sa/bot", "tag:blue", "key:key_abc"} {
		s, err := ParseSubject(ok)
		require.NoError(t, err, ok)
		require.Equal(t, ok, string(s))
	}
	for bad, msg := range map[string]string{
		"":             "subject is empty",
		"alice":        "want kind:id",
		"user:":        "empty id",
		"user:a b":     "whitespace",
		"user:a\nb":    "whitespace",
		"planet:earth": `unknown kind "planet"`,
	} {
		_, err := ParseSubject(bad)
		require.ErrorContains(t, err, msg, bad)
	}
	subs, err := ParseSubjects([]string{"user:a", "team:b", "user:a"})
	require.NoError(t, err)
	require.Equal(t, []Subject{"user:a", "team:b"}, subs)
}

func TestCmpProducts(t *testing.T) {
	t.Parallel()
	big := int64(1) << 62
	require.Equal(t, 1, cmpProducts(big, 4, big, 3))
	require.Equal(t, 0, cmpProducts(6, 4, 8, 3))
	require.Equal(t, -1, cmpProducts(-5, 2, 1, 1))
	require.Equal(t, int64(3), mulDivCeil(7, 3, 7))
	require.Equal(t, int64(4), mulDivCeil(10, 3, 8)) // 30/8 = 3.75 → 4
	require.Equal(t, int64(3), mulDivFloor(10, 3, 8))
	require.Equal(t, int64(1<<63-1), mulDivCeil(big, big, 1))
}

func TestUnit_Format(t *testing.T) {
	t.Parallel()
	require.Equal(t, "12.500000", USD.Format(12_500_000))
	require.Equal(t, "0.000150", USD.Format(150))
	require.Equal(t, "-1.000001", USD.Format(-1_000_001))
	require.Equal(t, "150000", Tokens.Format(150_000))
}
