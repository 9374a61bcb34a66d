package migrations

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// UpHistoric applies the numbered migrations up to version to, one transaction each, without
// functions/: what binaries before functions/ existed did to users' databases.
func UpHistoric(ctx context.Context, db *pgxpool.Pool, to int) error {
	all, err := All()
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, createTable); err != nil {
		return err
	}
	for _, m := range all[:to] {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO purser_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", m.Version, err)
		}
	}
	return nil
}

// Definitions returns pg_get_functiondef of every function in the pool's schema, by signature.
func Definitions(ctx context.Context, db *pgxpool.Pool) (map[string]string, error) {
	return definitions(ctx, db)
}
