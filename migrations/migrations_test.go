package migrations_test

import (
	"context"
	"errors"
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
