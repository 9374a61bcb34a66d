package admin

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFormatUSD(t *testing.T) {
	t.Parallel()
	for in, want := range map[int64]string{1_500_000: "$1.50", 360: "$0.00036", 10_000_000: "$10.00", 0: "$0.00", -2_000_000: "-$2.00", 1: "$0.000001"} {
		require.Equal(t, want, FormatUSD(in), "FormatUSD(%d)", in)
	}
}

func TestAuditEntry_DetailsText(t *testing.T) {
	t.Parallel()
	asked := 0
	unitOf := func(target string) string {
		asked++
		require.Equal(t, "budget:7", target, "the unit is asked for the entry's own target")
		return "usd"
	}
	for _, c := range []struct{ details, want string }{
		{`{"name":"small","limit":1500000,"unit":"usd"}`, "limit=$1.50 name=small unit=usd"},
		{`{"amount":25000000,"reason":"launch day"}`, `amount=$25.00 reason="launch day"`},
		{`{"limit":150000,"unit":"tokens"}`, "limit=150000 tokens unit=tokens"},
		{`{"subjects":["team:a","user:b"]}`, `subjects=["team:a","user:b"]`},
		{`"not an object"`, `"not an object"`},
	} {
		e := AuditEntry{Target: "budget:7", Details: json.RawMessage(c.details)}
		require.Equal(t, c.want, e.DetailsText(unitOf), "details %s", c.details)
	}
	require.Equal(t, 1, asked, "only the grant without a unit needs the budget's unit")
	e := AuditEntry{Target: "budget:7", Details: json.RawMessage(`{"amount":5}`)}
	require.Equal(t, "amount=5 (micro-units of the budget's unit)", e.DetailsText(nil), "no unit known: the raw figure, said to be raw")
}
