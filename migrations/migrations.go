// Package migrations holds purser's schema as plain SQL files, embedded in the binary, and the
// migrator that applies them.
//
// Each file NNN_name.up.sql is one migration, applied in its own transaction together with the
// row that records it. A session-level advisory lock (keyed by the schema name) serialises
// concurrent migrators, so several replicas starting at once cannot race.
//
// The ledger's SQL functions are defined once, in functions/*.sql (CREATE OR REPLACE), and
// re-applied after the numbered migrations, in the transaction of the last one applied (or a
// transaction of their own when none was pending, rolled back when it changed no definition).
// The numbered migrations that created or patched functions before (001, 002, 004, 007, 009)
// stay as they ran; see README.md for the rules.
package migrations

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql functions/*.sql
var files embed.FS

// Migration is one embedded schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.Glob(files, "*.up.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	out := make([]Migration, 0, len(entries))
	for _, name := range entries {
		base := strings.TrimSuffix(path.Base(name), ".up.sql")
		num, rest, ok := strings.Cut(base, "_")
		if !ok {
			return nil, fmt.Errorf("migration %s: name must be NNN_name.up.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: bad version %q", name, num)
		}
		body, err := files.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: rest, SQL: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration versions must be 1..n without gaps; found %d at position %d", m.Version, i+1)
		}
	}
	return out, nil
}

// Latest is the version the embedded migrations bring a schema to.
func Latest() (int, error) {
	all, err := All()
	if err != nil {
		return 0, err
	}
	return len(all), nil
}

// Function is one file of functions/: the current definition of one SQL function.
type Function struct {
	Name string // the file name without .sql
	SQL  string
}

// Functions returns the embedded function definitions in file-name order.
func Functions() ([]Function, error) {
	entries, err := fs.Glob(files, "functions/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list functions: %w", err)
	}
	sort.Strings(entries)
	out := make([]Function, 0, len(entries))
	for _, name := range entries {
		body, err := files.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		out = append(out, Function{Name: strings.TrimSuffix(path.Base(name), ".sql"), SQL: string(body)})
	}
	return out, nil
}

const createTable = `CREATE TABLE IF NOT EXISTS purser_migrations (
	version    integer PRIMARY KEY,
	name       text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS purser_functions (
	digest     text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`

// FunctionsDigest is the SHA-256 (hex) of functions/, which migrate records in
// purser_functions and Check compares.
func FunctionsDigest() (string, error) {
	fns, err := Functions()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range fns {
		fmt.Fprintf(h, "%s\x00%s\x00", f.Name, f.SQL)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Current reports the schema version recorded in the database (0 for an empty schema).
func Current(ctx context.Context, db *pgxpool.Pool) (int, error) {
	var exists bool
	err := db.QueryRow(ctx, `SELECT to_regclass('purser_migrations') IS NOT NULL`).Scan(&exists)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := db.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM purser_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// ErrBehind is returned by Check when the database schema is older than this binary.
var ErrBehind = errors.New("database schema is behind this binary")

// Check returns nil when the schema is exactly at the embedded latest version with the
// functions of functions/ applied, ErrBehind (wrapped, naming the fix) when it is older or
// its functions were applied by another binary (or none: a schema migrated before functions/
// existed), and an error when it is newer.
func Check(ctx context.Context, db *pgxpool.Pool) error {
	cur, err := Current(ctx, db)
	if err != nil {
		return err
	}
	latest, err := Latest()
	if err != nil {
		return err
	}
	switch {
	case cur < latest:
		return fmt.Errorf("%w: schema version %d, binary needs %d; run `purser migrate` first", ErrBehind, cur, latest)
	case cur > latest:
		return fmt.Errorf("database schema version %d is newer than this binary (%d); upgrade purser", cur, latest)
	}
	want, err := FunctionsDigest()
	if err != nil {
		return err
	}
	var got *string
	err = db.QueryRow(ctx, `SELECT CASE WHEN to_regclass('purser_functions') IS NOT NULL
		THEN (SELECT max(digest) FROM purser_functions) END`).Scan(&got)
	if err != nil {
		return fmt.Errorf("read ledger functions digest: %w", err)
	}
	if got == nil || *got != want {
		return fmt.Errorf("%w: the ledger functions were not applied by this binary's migrate; run `purser migrate` first", ErrBehind)
	}
	return nil
}

// Up applies every pending migration, then re-applies functions/ (see the package comment),
// and returns the versions it applied.
func Up(ctx context.Context, db *pgxpool.Pool) ([]int, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	fns, err := Functions()
	if err != nil {
		return nil, err
	}
	conn, err := db.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()

	// The lock key includes the schema so isolated test schemas do not wait for each other.
	const lockSQL = `SELECT pg_advisory_lock(hashtextextended('purser-migrate:' || current_schema(), 0))`
	const unlockSQL = `SELECT pg_advisory_unlock(hashtextextended('purser-migrate:' || current_schema(), 0))`
	if _, err := conn.Exec(ctx, lockSQL); err != nil {
		return nil, fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		// Unlock on a context that survives the caller's cancellation; the session lock would
		// otherwise stay with the pooled connection.
		_, _ = conn.Exec(context.WithoutCancel(ctx), unlockSQL)
	}()

	if _, err := conn.Exec(ctx, createTable); err != nil {
		return nil, fmt.Errorf("create migrations table: %w", err)
	}
	var cur int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM purser_migrations`).Scan(&cur); err != nil {
		return nil, fmt.Errorf("read schema version: %w", err)
	}
	var pending []Migration
	for _, m := range all {
		if m.Version > cur {
			pending = append(pending, m)
		}
	}
	var applied []int
	for i, m := range pending {
		last := i == len(pending)-1
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO purser_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
				return err
			}
			if last {
				// With the last migration, so a schema never reaches the latest version with
				// the functions of an older one.
				_, err := applyFunctions(ctx, tx, fns)
				return err
			}
			return nil
		})
		if err != nil {
			return applied, fmt.Errorf("apply migration %03d_%s: %w", m.Version, m.Name, err)
		}
		applied = append(applied, m.Version)
	}
	if len(pending) == 0 {
		// Nothing pending: re-apply the functions, and roll back when no definition changed,
		// so re-running migrate leaves the catalog (and every session's cached plans) alone.
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			changed, err := applyFunctions(ctx, tx, fns)
			if err == nil && !changed {
				err = errUnchanged
			}
			return err
		})
		if err != nil && !errors.Is(err, errUnchanged) {
			return nil, err
		}
	}
	return applied, nil
}

var errUnchanged = errors.New("no function definition changed")

// applyFunctions runs every function file in tx, records their digest, and reports whether
// anything changed: a definition in the schema (pg_get_functiondef before and after) or the
// recorded digest.
func applyFunctions(ctx context.Context, tx pgx.Tx, fns []Function) (bool, error) {
	before, err := definitions(ctx, tx)
	if err != nil {
		return false, err
	}
	// As pg_dump does: SQL-language bodies are checked when first run, not when created, so a
	// function may use one whose file comes later in name order.
	if _, err := tx.Exec(ctx, `SET LOCAL check_function_bodies = off`); err != nil {
		return false, fmt.Errorf("apply functions: %w", err)
	}
	for _, f := range fns {
		if _, err := tx.Exec(ctx, f.SQL); err != nil {
			return false, fmt.Errorf("apply functions/%s.sql: %w", f.Name, err)
		}
	}
	after, err := definitions(ctx, tx)
	if err != nil {
		return false, err
	}
	digest, err := FunctionsDigest()
	if err != nil {
		return false, err
	}
	tag, err := tx.Exec(ctx, `DELETE FROM purser_functions WHERE digest <> $1`, digest)
	if err != nil {
		return false, fmt.Errorf("record functions digest: %w", err)
	}
	ins, err := tx.Exec(ctx, `INSERT INTO purser_functions (digest) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM purser_functions)`, digest)
	if err != nil {
		return false, fmt.Errorf("record functions digest: %w", err)
	}
	return !maps.Equal(before, after) || tag.RowsAffected() > 0 || ins.RowsAffected() > 0, nil
}

// definitions returns the definition of every function in the current schema, by signature,
// without the schema name (so two schemas can be compared).
func definitions(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT p.oid::regprocedure::text,
		replace(pg_get_functiondef(p.oid), ' FUNCTION ' || quote_ident(current_schema()) || '.', ' FUNCTION ')
		FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace AND p.prokind = 'f'`)
	if err != nil {
		return nil, fmt.Errorf("read function definitions: %w", err)
	}
	defs := map[string]string{}
	var sig, def string
	_, err = pgx.ForEachRow(rows, []any{&sig, &def}, func() error {
		defs[sig] = def
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read function definitions: %w", err)
	}
	return defs, nil
}
