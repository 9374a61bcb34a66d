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
	followPrimary(cfg)
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

// sqlstateReadOnly is read_only_sql_transaction: the server refused a write because it is
// a standby, or was made read-only (default_transaction_read_only, a fenced old primary).
const sqlstateReadOnly = "25006"

// followPrimary makes a pool let go of connections to a server that no longer takes
// writes, so that it reconnects (with target_session_attrs=read-write in the URL, to
// whichever listed host is now the primary) instead of failing every write on a connection
// it keeps forever. pgxpool itself only drops connections that are closed or broken: a
// connection to a fenced primary stays open and healthy for reads and pings.
//
//   - A write refused with SQLSTATE 25006 closes its connection at once (pgconn's OnPgError
//     contract: returning false closes the connection; FATAL errors still close it too).
//   - A connection whose server reported default_transaction_read_only=on or
//     in_hot_standby=on (GUC_REPORT parameters sent by PostgreSQL 14+ whenever they change,
//     e.g. after a reload that fences the server) is destroyed when it is released, so even a
//     connection that only read is not reused.
//
// Neither hook costs a round trip.
func followPrimary(cfg *pgxpool.Config) {
	prev := cfg.ConnConfig.OnPgError
	cfg.ConnConfig.OnPgError = func(c *pgconn.PgConn, e *pgconn.PgError) bool {
		if e.Code == sqlstateReadOnly {
			return false
		}
		if prev != nil {
			return prev(c, e)
		}
		return !strings.EqualFold(e.Severity, "FATAL")
	}
	cfg.AfterRelease = func(c *pgx.Conn) bool { return !reportsReadOnly(c.PgConn()) }
}

// reportsReadOnly reports whether the server told this connection it does not take writes.
func reportsReadOnly(c *pgconn.PgConn) bool {
	return c.ParameterStatus("default_transaction_read_only") == "on" || c.ParameterStatus("in_hot_standby") == "on"
}

// Why a pool cannot write, as /readyz reports it.
var (
	errDBUnreachable  = errors.New("database unreachable")
	errDBReadOnly     = errors.New("database is read-only (a standby or a fenced primary)")
	errDBNotCommitted = errors.New("database did not commit a write")
)

// checkWritable tells whether each pool can write now: a connection from each (the pool's
// own reconnection logic picks the host) must be on a read-write server and commit a
// transaction that took a transaction id. The commit is what a reservation needs: with
// synchronous replication and no standby to confirm it, it waits, and the caller's deadline
// turns that into "not ready" (so does a server that hangs). A connection found read-only is
// closed so that the pool reconnects to the new primary, if there is one.
func checkWritable(ctx context.Context, pools ...*pgxpool.Pool) error {
	for _, p := range pools {
		if err := checkPoolWritable(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func checkPoolWritable(ctx context.Context, p *pgxpool.Pool) error {
	c, err := p.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", errDBUnreachable, err)
	}
	defer c.Release()
	var readOnly string
	if err := c.QueryRow(ctx, `SHOW transaction_read_only`).Scan(&readOnly); err != nil {
		return fmt.Errorf("%w: %w", errDBUnreachable, err)
	}
	if readOnly == "on" {
		_ = c.Conn().Close(ctx)
		return errDBReadOnly
	}
	// pg_current_xact_id() assigns a transaction id, so the implicit transaction writes a
	// commit record and waits for it like any write (WAL flush, synchronous standbys).
	if _, err := c.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		return fmt.Errorf("%w: %w", errDBNotCommitted, err)
	}
	return nil
}

// readyReason is the short answer /readyz gives for a checkWritable error (no host names,
// no user names).
func readyReason(err error) string {
	for _, e := range []error{errDBReadOnly, errDBNotCommitted, errDBUnreachable} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return errDBUnreachable.Error()
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
