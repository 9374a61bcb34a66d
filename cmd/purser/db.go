package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/migrations"
)

// defaultDatabaseURL is the local trust-auth server most development machines have.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/purser?sslmode=disable"

func databaseFlag(f *flags) *string {
	return f.Secret("database-url", "DATABASE_URL", defaultDatabaseURL, "Postgres connection URL")
}

// openPool opens a pool of at most maxConns connections and checks that the server answers.
func openPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
		cfg.MinConns = min(maxConns, 4) // keep a few open: reconnecting costs a Check its deadline
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", redactURL(dsn), err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s: %w", redactURL(dsn), err)
	}
	return pool, nil
}

// openLedger opens a small pool on a migrated database and returns the ledger on it, for the
// one-shot commands (seed, verify). The returned func releases the pool.
func openLedger(ctx context.Context, dsn string) (*budget.Service, func(), error) {
	pool, err := openPool(ctx, dsn, 2)
	if err != nil {
		return nil, nil, err
	}
	if err := migrations.Check(ctx, pool); err != nil {
		pool.Close()
		return nil, nil, err
	}
	st := store.New(pool)
	return budget.New(st, st, budget.Config{}), pool.Close, nil
}

// warmPool opens every connection of the pool before traffic arrives, so the first Checks
// after a start do not pay for connection set-up inside Envoy's deadline.
func warmPool(ctx context.Context, pool *pgxpool.Pool) error {
	n := int(pool.Config().MaxConns)
	conns := make([]*pgxpool.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range n {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("warm database pool: %w", err)
		}
		conns = append(conns, c)
	}
	return nil
}

// ensureDatabase creates the URL's database when the server says it does not exist, by
// connecting to the "postgres" maintenance database of the same server.
func ensureDatabase(ctx context.Context, dsn string) (created bool, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return false, fmt.Errorf("database url: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return false, conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" { // invalid_catalog_name
		return false, fmt.Errorf("connect to database %s: %w", redactURL(dsn), err)
	}
	name := cfg.Database
	admin := cfg.Copy()
	admin.Database = "postgres"
	ac, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return false, fmt.Errorf("database %q does not exist and the maintenance database is unreachable: %w", name, err)
	}
	defer ac.Close(ctx)
	if _, err := ac.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P04" { // duplicate_database: another process won
			return false, nil
		}
		return false, fmt.Errorf("create database %q: %w", name, err)
	}
	return true, nil
}

// redactURL drops the password from a connection URL for messages.
func redactURL(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		if i := strings.Index(dsn, "password="); i >= 0 {
			return dsn[:i] + "password=***"
		}
		return "(database)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "***")
	}
	return u.String()
}
