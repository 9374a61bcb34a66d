package admin

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

// TestOpenAPI_MatchesRoutes keeps admin/openapi.yaml and the mux in step: every registered
// route is documented and every documented route is registered; every $ref resolves.
func TestOpenAPI_MatchesRoutes(t *testing.T) {
	t.Parallel()
	var doc map[string]any
	require.NoError(t, yaml.UnmarshalStrict(openAPISpec, &doc))
	require.Equal(t, "3.1.0", doc["openapi"])

	documented := map[string]bool{}
	paths, ok := doc["paths"].(map[string]any)
	require.True(t, ok, "paths")
	for p, item := range paths {
		for m := range item.(map[string]any) {
			switch m {
			case "get", "post", "put", "patch", "delete":
				documented[strings.ToUpper(m)+" "+p] = true
			case "parameters", "summary", "description":
			default:
				t.Errorf("%s: unexpected key %q", p, m)
			}
		}
	}
	registered := map[string]bool{}
	for _, rt := range routes() {
		registered[rt.method+" "+rt.path] = true
	}
	require.Equal(t, sorted(registered), sorted(documented))

	// Every $ref points at something that exists.
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if k == "$ref" {
					ref := c.(string)
					require.True(t, strings.HasPrefix(ref, "#/"), "%s: external $ref %s", path, ref)
					var cur any = doc
					for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
						m, ok := cur.(map[string]any)
						require.True(t, ok, "%s: $ref %s does not resolve", path, ref)
						cur, ok = m[part]
						require.True(t, ok, "%s: $ref %s does not resolve", path, ref)
					}
					continue
				}
				walk(path+"/"+k, c)
			}
		case []any:
			for i, c := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		}
	}
	walk("", doc)

	// Every admin route documents the auth failures; every route with a body documents 413.
	for key := range registered {
		method, p, _ := strings.Cut(key, " ")
		op := paths[p].(map[string]any)[strings.ToLower(method)].(map[string]any)
		resp := op["responses"].(map[string]any)
		for _, rt := range routes() {
			if rt.method != method || rt.path != p {
				continue
			}
			if !rt.rule.public {
				require.Contains(t, resp, "401", key)
				require.Contains(t, resp, "500", key)
			}
			if len(rt.rule.roles) > 0 {
				require.Contains(t, resp, "403", key)
			}
			if _, hasBody := op["requestBody"]; hasBody {
				require.Contains(t, resp, "400", key)
			}
		}
	}
}

func sorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
