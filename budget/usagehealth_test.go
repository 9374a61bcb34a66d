package budget_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/budget/store/pgtest"
)

// TestUsageHealth groups resolved reservations by route, provider and model and counts those
// charged without usage, by why, whatever the join; voided, pending, unreserved and old ones
// do not count.
func TestUsageHealth(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	st := store.New(s.Pool)
	svc := budget.New(st, st, budget.Config{})
	ctx := context.Background()
	ins := func(route, state, cause string, age time.Duration, unreserved bool) {
		t.Helper()
		_, err := s.Pool.Exec(ctx, `
INSERT INTO reservations (id, expires_at, resolved_at, state, route, provider, model, hold_cost, hold_tokens, cause, unreserved)
VALUES (gen_random_uuid(), now(), CASE WHEN $2 = 'pending' THEN NULL ELSE now() - $4::interval END, $2, $1, 'openai', 'gpt-4o-mini', 10, 10, NULLIF($3, ''), $5)`,
			route, state, cause, age.String(), unreserved)
		require.NoError(t, err)
	}
	for range 3 {
		ins("chat", "settled", "usage", time.Minute, false)
	}
	ins("chat", "settled", "missing_usage:compressed", time.Minute, false)
	ins("chat", "settled", "request_id_join:missing_usage:compressed", time.Minute, false)
	ins("chat", "settled", "missing_usage:stream", time.Minute, false)
	ins("chat", "settled", "invalid_usage", time.Minute, false)
	ins("chat", "expired", "expired", time.Minute, false)
	ins("chat", "voided", "provider_error", time.Minute, false) // costs nothing
	ins("chat", "pending", "", 0, false)                        // not resolved
	ins("chat", "settled", "missing_usage", 3*time.Hour, false) // before the span
	ins("chat", "settled", "missing_usage", time.Minute, true)  // unreserved: no hold
	ins("embeddings", "settled", "missing_usage", time.Minute, false)

	rows, err := svc.UsageHealth(ctx, time.Now().Add(-time.Hour))
	require.NoError(t, err)
	require.Equal(t, []budget.UsageHealth{
		{Route: "chat", Provider: "openai", Model: "gpt-4o-mini", Resolved: 8, WithoutUsage: 4, Compressed: 2, Streams: 1, Expired: 1},
		{Route: "embeddings", Provider: "openai", Model: "gpt-4o-mini", Resolved: 1, WithoutUsage: 1},
	}, rows)
	resolved, without := budget.UsageShortfall(rows)
	require.Equal(t, int64(9), resolved)
	require.Equal(t, int64(5), without)

	dbNow, err := svc.DatabaseClock(ctx)
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), dbNow, time.Minute, "the test database runs on this machine")
}
