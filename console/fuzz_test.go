package console

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzSafeNext: a post-sign-in target is either dropped or a path of this console on this
// host, however a browser reads it (browsers drop tabs and newlines from URLs): never an open
// redirect.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{"/ui/budgets?q=x", "//evil.example/ui/", "/ui/\t//evil.example", "https://evil.example/ui/",
		"/ui/..//evil", "/ui\\evil", "/\\evil.example", "", "/ui/%2F%2Fevil"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, next string) {
		got := safeNext(next)
		if got == "" {
			return
		}
		if got != next {
			t.Fatalf("safeNext changed %q into %q", next, got)
		}
		read := strings.NewReplacer("\t", "", "\n", "", "\r", "").Replace(got)
		u, err := url.Parse(read)
		if err != nil {
			return // the browser cannot follow it either
		}
		if u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, "/ui/") && !strings.HasPrefix(read, "/ui/") {
			t.Fatalf("safeNext(%q) leaves the console: %+v", next, u)
		}
	})
}

func FuzzSplitList(f *testing.F) {
	for _, s := range []string{"team:ml, user:*", "a,,b\n c\r\n", "", " , "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, item := range splitList(s) {
			if item == "" || item != strings.TrimSpace(item) || strings.ContainsAny(item, ",\n\r") {
				t.Fatalf("splitList(%q) gave %q", s, item)
			}
		}
	})
}
