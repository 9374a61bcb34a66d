// Package pgtest gives each test its own Postgres schema, migrated to the latest version.
//
// The database comes from TEST_DATABASE_URL (default: the local trust-auth server at
// 127.0.0.1:5432, database "test"). When no server answers, tests skip with a message — unless
// CI=true, where a missing database is a failure.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/purser-dev/purser/migrations"
)

// DefaultURL is used when TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// URL returns the test database URL.
func URL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// Schema is an isolated, migrated schema.
type Schema struct {
	Name string
	Pool *pgxpool.Pool
	// ConnString opens further pools (or subprocesses) on the same schema.
	ConnString string
}

// New creates a fresh schema, migrates it and returns a pool whose search_path is that schema.
// Everything is dropped when the test ends.
func New(t testing.TB) *Schema {
	return NewWithPoolSize(t, 8)
}

// NewWithPoolSize is New with a chosen pool size.
func NewWithPoolSize(t testing.TB, maxConns int32) *Schema {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	admin, err := pgxpool.New(ctx, URL())
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		if admin != nil {
			admin.Close()
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: database %s unreachable: %v", redact(URL()), err)
		}
		t.Skipf("pgtest: no Postgres at %s (set TEST_DATABASE_URL): %v", redact(URL()), err)
	}

	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, `CREATE SCHEMA `+name); err != nil {
		admin.Close()
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, `DROP SCHEMA `+name+` CASCADE`); err != nil {
			t.Logf("pgtest: drop schema %s: %v", name, err)
		}
		admin.Close()
	})

	cfg, err := pgxpool.ParseConfig(URL())
	if err != nil {
		t.Fatalf("pgtest: parse url: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = name
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Up(ctx, pool); err != nil {
		t.Fatalf("pgtest: migrate: %v", err)
	}
	return &Schema{Name: name, Pool: pool, ConnString: cfg.ConnString() + searchPathParam(cfg.ConnString(), name)}
}

func searchPathParam(conn, schema string) string {
	sep := "?"
	for _, c := range conn {
		if c == '?' {
			sep = "&"
			break
		}
	}
	return sep + "search_path=" + schema
}

func redact(u string) string {
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		return "(unparsable url)"
	}
	return cfg.ConnConfig.User + "@" + cfg.ConnConfig.Host + "/" + cfg.ConnConfig.Database
}

// Strings runs a query of one text column and returns its rows, failing the test on error.
func (s *Schema) Strings(t testing.TB, sql string, args ...any) []string {
	t.Helper()
	rows, err := s.Pool.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
	return out
}
