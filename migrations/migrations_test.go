package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget/store/pgtest"
	"github.com/purser-dev/purser/migrations"
)

func TestAll_Numbered(t *testing.T) {
	all, err := migrations.All()
	require.NoError(t, err)
	require.NotEmpty(t, all)
	for i, m := range all {
		require.Equal(t, i+1, m.Version)
		require.NotEmpty(t, m.SQL)
	}
}

func TestUp_ConcurrentAndIdempotent(t *testing.T) {
	s := pgtest.New(t) // already migrated once
	ctx := context.Background()

	// Several "replicas" migrating at once: the advisory lock serialises them and nobody fails.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			applied, err := migrations.Up(ctx, s.Pool)
			if err == nil && len(applied) != 0 {
				err = errors.New("re-applied a migration")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, migrations.Check(ctx, s.Pool))
}

func TestCheck_Behind(t *testing.T) {
	s := pgtest.New(t)
	ctx := context.Background()
	_, err := s.Pool.Exec(ctx, `DELETE FROM purser_migrations WHERE version = (SELECT max(version) FROM purser_migrations)`)
	require.NoError(t, err)
	err = migrations.Check(ctx, s.Pool)
	require.ErrorIs(t, err, migrations.ErrBehind)
	require.Contains(t, err.Error(), "run `purser migrate`")
}

// A schema at the latest version whose functions this binary's migrate did not apply (one
// migrated before functions/ existed) is behind: serve refuses it until migrate has run.
func TestCheck_FunctionsNotApplied(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()
	_, err := s.Pool.Exec(ctx, `DELETE FROM purser_functions`)
	require.NoError(t, err)
	err = migrations.Check(ctx, s.Pool)
	require.ErrorIs(t, err, migrations.ErrBehind, "no recorded functions digest: behind")
	require.Contains(t, err.Error(), "run `purser migrate`", "the error names the fix")
	applied, err := migrations.Up(ctx, s.Pool)
	require.NoError(t, err)
	require.Empty(t, applied, "no numbered migration is pending")
	require.NoError(t, migrations.Check(ctx, s.Pool), "migrate recorded the digest")
}

func TestCheck_EmptySchema(t *testing.T) {
	s := pgtest.New(t)
	ctx := context.Background()
	cfg := s.Pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["search_path"] = s.Name + "_empty"
	_, err := s.Pool.Exec(ctx, `CREATE SCHEMA `+s.Name+`_empty`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = s.Pool.Exec(context.Background(), `DROP SCHEMA `+s.Name+`_empty CASCADE`) })
	empty, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer empty.Close()
	cur, err := migrations.Current(ctx, empty)
	require.NoError(t, err)
	require.Equal(t, 0, cur)
	require.ErrorIs(t, migrations.Check(ctx, empty), migrations.ErrBehind)
}

// emptySchema returns a pool on a new, empty schema next to s's, dropped when the test ends.
func emptySchema(t *testing.T, s *pgtest.Schema, suffix string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	name := s.Name + "_" + suffix
	_, err := s.Pool.Exec(ctx, `CREATE SCHEMA `+name)
	require.NoError(t, err, "create schema %s", name)
	t.Cleanup(func() { _, _ = s.Pool.Exec(context.Background(), `DROP SCHEMA `+name+` CASCADE`) })
	cfg := s.Pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["search_path"] = name
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// A database created fresh and one migrated step by step by older binaries (which had no
// functions/) and then upgraded, from every version, end with the same function definitions.
func TestFunctions_FreshEqualsStepwise(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()
	latest, err := migrations.Latest()
	require.NoError(t, err)
	want, err := migrations.Definitions(ctx, s.Pool)
	require.NoError(t, err)
	fns, err := migrations.Functions()
	require.NoError(t, err)
	for _, f := range fns {
		require.True(t, slices.ContainsFunc(slices.Collect(maps.Keys(want)), func(sig string) bool { return strings.HasPrefix(sig, f.Name+"(") }),
			"functions/%s.sql defines a function of that name", f.Name)
	}
	for from := range latest + 1 {
		old := emptySchema(t, s, fmt.Sprintf("v%d", from))
		require.NoError(t, migrations.UpHistoric(ctx, old, from), "migrate step by step to %d as older binaries did", from)
		applied, err := migrations.Up(ctx, old)
		require.NoError(t, err, "upgrade from %d", from)
		require.Len(t, applied, latest-from, "the upgrade from %d applies the rest", from)
		got, err := migrations.Definitions(ctx, old)
		require.NoError(t, err)
		require.Equal(t, slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(got)), "the same functions after an upgrade from %d", from)
		for sig, def := range want {
			require.Equal(t, def, got[sig], "%s as a fresh database defines it, after an upgrade from %d", sig, from)
		}
	}
}

// Re-running migrate on an up-to-date schema changes nothing: no function's catalog row is
// rewritten (which would also drop every session's cached plans of it).
func TestUp_RerunIsNoOp(t *testing.T) {
	t.Parallel()
	s := pgtest.New(t)
	ctx := context.Background()
	const rows = `SELECT p.oid::regprocedure::text || ' xmin ' || p.xmin::text FROM pg_proc p
		WHERE p.pronamespace = current_schema()::regnamespace ORDER BY 1`
	before := s.Strings(t, rows)
	require.NotEmpty(t, before)
	applied, err := migrations.Up(ctx, s.Pool)
	require.NoError(t, err)
	require.Empty(t, applied, "nothing is pending")
	require.Equal(t, before, s.Strings(t, rows), "re-running migrate rewrote no function")

	// A function changed by hand is restored by the next migrate.
	_, err = s.Pool.Exec(ctx, `ALTER FUNCTION purser_reserve RESET plan_cache_mode`)
	require.NoError(t, err)
	_, err = migrations.Up(ctx, s.Pool)
	require.NoError(t, err)
	require.Equal(t, []string{"{enable_seqscan=off,plan_cache_mode=force_generic_plan}"},
		s.Strings(t, `SELECT proconfig::text FROM pg_proc WHERE proname = 'purser_reserve' AND pronamespace = current_schema()::regnamespace`),
		"migrate restores purser_reserve's settings from functions/purser_reserve.sql")
}

// historicFunctions lists the numbered migrations that created or changed functions before
// functions/ existed. A later migration may not ALTER a function (the file's definition would
// silently undo it), and may CREATE one only if functions/ has its file: say, so that a
// trigger the migration creates can name it; the file then replaces the definition at once.
var historicFunctions = map[int]bool{1: true, 2: true, 4: true, 7: true, 9: true}

func TestFunctions_NotInNumberedMigrations(t *testing.T) {
	all, err := migrations.All()
	require.NoError(t, err)
	fns, err := migrations.Functions()
	require.NoError(t, err)
	files := map[string]bool{}
	for _, f := range fns {
		files[f.Name] = true
	}
	alter := regexp.MustCompile(`(?i)\bALTER\s+FUNCTION\b`)
	create := regexp.MustCompile(`(?i)\bCREATE\s+(OR\s+REPLACE\s+)?FUNCTION\s+(\w+)`)
	for _, m := range all {
		if historicFunctions[m.Version] {
			continue
		}
		require.False(t, alter.MatchString(m.SQL),
			"migration %03d_%s alters a function: change its file in migrations/functions/ instead (see migrations/README.md)", m.Version, m.Name)
		for _, c := range create.FindAllStringSubmatch(m.SQL, -1) {
			require.True(t, files[strings.ToLower(c[2])],
				"migration %03d_%s creates function %s: its definition belongs in migrations/functions/%s.sql (see migrations/README.md)", m.Version, m.Name, c[2], c[2])
		}
	}
}

// A change to functions/ must come with a new numbered migration (a comment saying what
// changed is enough), so that purser serve, which checks only the schema version, refuses a
// database whose functions are older than the binary's until purser migrate has run, and an
// older binary refuses a database whose functions are newer. functions.sum records, for each
// such version, the digest of functions/ it brought.
func TestFunctions_ChangeComesWithMigration(t *testing.T) {
	digest, err := migrations.FunctionsDigest()
	require.NoError(t, err)
	latest, err := migrations.Latest()
	require.NoError(t, err)

	sum, err := os.ReadFile("functions.sum")
	require.NoError(t, err)
	var lastVersion int
	var lastDigest string
	for _, line := range strings.Split(string(sum), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var v int
		var d string
		_, err := fmt.Sscanf(line, "%d %s", &v, &d)
		require.NoError(t, err, "functions.sum line %q is `<version> <sha256>`", line)
		require.Greater(t, v, lastVersion, "functions.sum: versions increase (%q)", line)
		require.NotEqual(t, lastDigest, d, "functions.sum: each line records a change (%q)", line)
		lastVersion, lastDigest = v, d
	}
	require.LessOrEqual(t, lastVersion, latest, "functions.sum names an existing migration")
	require.Equal(t, lastDigest, digest,
		"migrations/functions/ changed since migration %d: add a numbered migration %d (a comment saying what changed is enough), then append the line\n%d %s\nto migrations/functions.sum",
		lastVersion, latest+1, latest+1, digest)
}
