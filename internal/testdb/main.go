// Command testdb creates the test database (TEST_DATABASE_URL, default the local server's
// "test" database) when the server says it does not exist, so that `make test` works on a
// fresh machine. It connects to the "postgres" maintenance database of the same server to
// create it, and does nothing when the database is there.
//
//	go run ./internal/testdb
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/purser-dev/purser/budget/store/pgtest"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msg, err := ensure(ctx, pgtest.URL())
	if err != nil {
		fmt.Fprintln(os.Stderr, "testdb:", err)
		os.Exit(1)
	}
	fmt.Println("testdb:", msg)
}

// ensure creates dsn's database when it is missing and says what it found or did.
func ensure(ctx context.Context, dsn string) (string, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("TEST_DATABASE_URL: %w", err)
	}
	name := cfg.Database
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return fmt.Sprintf("database %q is there", name), conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" { // invalid_catalog_name
		return "", fmt.Errorf("connect to database %q on %s:%d as %s: %w (set TEST_DATABASE_URL)", name, cfg.Host, cfg.Port, cfg.User, err)
	}
	admin := cfg.Copy()
	admin.Database = "postgres"
	ac, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return "", fmt.Errorf("database %q does not exist and the maintenance database is unreachable: %w", name, err)
	}
	defer ac.Close(ctx)
	if _, err := ac.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P04" { // duplicate_database: another process won
			return fmt.Sprintf("database %q is there", name), nil
		}
		return "", fmt.Errorf("create database %q: %w", name, err)
	}
	return fmt.Sprintf("created database %q", name), nil
}
