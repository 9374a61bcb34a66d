package pricing

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// embeddedOnce parses the embedded catalog once for all tests; a Catalog is immutable.
var embeddedOnce = sync.OnceValues(Embedded)

func testCatalog(t testing.TB) *Catalog {
	t.Helper()
	c, err := embeddedOnce()
	require.NoError(t, err)
	return c
}

// body decodes JSON the way encoding/json does for an Envoy Struct (numbers as float64).
func body(t testing.TB, s string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(s), &m))
	return m
}

// bodyNumbers decodes JSON keeping numbers as json.Number.
func bodyNumbers(t testing.TB, s string) map[string]any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var m map[string]any
	require.NoError(t, d.Decode(&m))
	return m
}

func mustModel(t testing.TB, c *Catalog, provider, model string) *Model {
	t.Helper()
	m, ok := c.Lookup(provider, model)
	require.True(t, ok, "lookup %s/%s", provider, model)
	return m
}
