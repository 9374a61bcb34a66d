package main

import (
	"context"
	"fmt"

	"github.com/purser-dev/purser/migrations"
)

func runMigrate(ctx context.Context, e env, args []string) error {
	f := newFlags("migrate", e)
	dsn := databaseFlag(f)
	create := f.Bool("create-database", "", true, "create the database when it does not exist")
	if err := f.Parse(args); err != nil {
		return err
	}
	if *create {
		created, err := ensureDatabase(ctx, *dsn)
		if err != nil {
			return err
		}
		if created {
			fmt.Fprintf(e.stdout, "created database %s\n", redactURL(*dsn))
		}
	}
	pool, err := openPool(ctx, *dsn, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := migrations.Up(ctx, pool)
	if err != nil {
		return err
	}
	cur, err := migrations.Current(ctx, pool)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(e.stdout, "schema is up to date (version %d)\n", cur)
		return nil
	}
	fmt.Fprintf(e.stdout, "applied migrations %v; schema is at version %d\n", applied, cur)
	return nil
}
