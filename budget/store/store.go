// Package store is purser's Postgres layer: SQL, row types and the mapping of Postgres errors
// to a few sentinels. It imports nothing of purser's; the budget package owns the domain.
package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Sentinel errors callers match with errors.Is. Every error the store returns for a
// Postgres error keeps it in the chain (errors.As with *pgconn.PgError).
var (
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("conflict")
	ErrUnavailable = errors.New("database unavailable")
	// ErrBudgetNameTaken: a live budget of the same subject has the name (a *ConflictError,
	// so also ErrConflict).
	ErrBudgetNameTaken = errors.New("a budget with this name already exists on this subject")
	// ErrTemplateNameTaken: a live template has the name (a *ConflictError).
	ErrTemplateNameTaken = errors.New("a template with this name already exists")
	// ErrTimeout (with ErrUnavailable) is a statement the server cancelled at its
	// lock_timeout or statement_timeout: its transaction rolled back, nothing was written.
	ErrTimeout = errors.New("database gave up at the deadline")
)

// conflictKinds names the unique constraints callers tell apart. The constraint names are the
// schema's (migrations/001_ledger.up.sql); they are matched here and nowhere else.
var conflictKinds = map[string]error{
	"budgets_subject_name":  ErrBudgetNameTaken,
	"budget_templates_name": ErrTemplateNameTaken,
}

// ConflictError is a unique violation. It matches ErrConflict, the kind of conflict when the
// constraint is one callers tell apart (ErrBudgetNameTaken...), and the *pgconn.PgError.
type ConflictError struct {
	Constraint string
	Err        *pgconn.PgError
}

func (e *ConflictError) Error() string { return "conflict: " + e.Constraint }

// Unwrap returns ErrConflict, the conflict's kind if known, and the Postgres error.
func (e *ConflictError) Unwrap() []error {
	errs := []error{ErrConflict}
	if k := conflictKinds[e.Constraint]; k != nil {
		errs = append(errs, k)
	}
	return append(errs, e.Err)
}

// Store runs purser's queries on a pool. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Pool exposes the underlying pool (health checks). Listen to notifications with Listen.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return interpret(err)
	}
	return nil
}

// interpret maps driver errors to the package sentinels, keeping the original in the chain.
func interpret(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23505": // unique_violation
			return &ConflictError{Constraint: pgErr.ConstraintName, Err: pgErr}
		case "55P03", "57014": // lock_not_available, query_canceled (lock_timeout, statement_timeout)
			return fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrTimeout, err)
		case "57P01", "57P02", "57P03", "53300", "08000", "08003", "08006":
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
