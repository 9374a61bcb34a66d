package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// whatIfs are experiments on purser's throwaway bench database only: each patches the schema
// the way a suggested fix would, so the report can say what the fix buys. They are off by
// default; a report made with any of them says so at the top.
var whatIfs = map[string]struct {
	about string
	sql   string
}{
	"generic-plans": {
		about: "purser_settle and purser_expire, like purser_reserve since migration 004, run with plan_cache_mode = force_generic_plan: their statements are planned once per connection instead of on every call (enable_seqscan = off keeps the cached plans on indexes)",
		sql: `
DO $$ DECLARE f regprocedure; BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.proname IN ('purser_settle', 'purser_expire') LOOP
    EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
  END LOOP;
END $$;`,
	},
	"custom-plans": {
		about: "purser_reserve, purser_settle and purser_expire run with plan_cache_mode = force_custom_plan, so their statements are planned with the tables' current sizes instead of a generic plan cached while the tables were small",
		sql: `
DO $$ DECLARE f regprocedure; BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.proname IN ('purser_reserve', 'purser_settle', 'purser_expire') LOOP
    EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_custom_plan', f);
  END LOOP;
END $$;`,
	},
}

func whatIfNames() string {
	var names []string
	for n := range whatIfs {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// applyWhatIfs patches purser's bench database.
func applyWhatIfs(ctx context.Context, db *pgxpool.Pool, names []string) error {
	for _, n := range names {
		w, ok := whatIfs[n]
		if !ok {
			return fmt.Errorf("-whatif: unknown experiment %q (known: %s)", n, whatIfNames())
		}
		if _, err := db.Exec(ctx, w.sql); err != nil {
			return fmt.Errorf("-whatif %s: %w", n, err)
		}
	}
	return nil
}
