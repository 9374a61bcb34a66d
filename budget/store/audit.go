package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// querier is what both the pool and a transaction offer.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Audit describes who made a change. Every mutation writes its audit row in the change's own
// transaction, so the log cannot miss a change that happened.
type Audit struct {
	Actor   string
	Action  string
	Target  string // filled by the mutation when it is only known afterwards (new ids)
	Details any    // marshalled to JSON; never put secrets here
}

// mutate runs fn and the audit insert in one transaction.
func (s *Store) mutate(ctx context.Context, a *Audit, fn func(q querier) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		details := []byte("{}")
		if a.Details != nil {
			var err error
			if details, err = json.Marshal(a.Details); err != nil {
				return fmt.Errorf("audit details: %w", err)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO audit_log (actor, action, target, details) VALUES ($1, $2, $3, $4)`,
			a.Actor, a.Action, a.Target, details)
		return err
	})
}

// AuditRow is one audit log entry.
type AuditRow struct {
	ID      int64
	At      time.Time
	Actor   string
	Action  string
	Target  string
	Details json.RawMessage
}

// AuditLog returns entries newest first, optionally only those about target, after the
// cursor id (0 = from the newest), at most limit.
func (s *Store) AuditLog(ctx context.Context, target string, before int64, limit int) ([]AuditRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, at, actor, action, target, details FROM audit_log
		WHERE ($1 = '' OR target = $1) AND ($2 = 0 OR id < $2) ORDER BY id DESC LIMIT $3`, target, before, limit)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditRow, error) {
		var a AuditRow
		err := r.Scan(&a.ID, &a.At, &a.Actor, &a.Action, &a.Target, &a.Details)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", interpret(err))
	}
	return out, nil
}
