package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// TemplateSubject names the budget a template made (or would make) for a subject.
type TemplateSubject struct {
	TemplateID int64
	Subject    string
}

// TemplateRef is what deciding materialisation needs of a live template.
type TemplateRef struct {
	ID          int64
	Name        string
	SubjectKind string
}

// LiveTemplates returns every live template's id, name and subject kind.
func (s *Store) LiveTemplates(ctx context.Context) ([]TemplateRef, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, subject_kind FROM budget_templates WHERE deleted_at IS NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("live templates: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TemplateRef, error) {
		var t TemplateRef
		err := r.Scan(&t.ID, &t.Name, &t.SubjectKind)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("live templates: %w", interpret(err))
	}
	return out, nil
}

// LoadBudgets returns the live budgets of the given subjects and, among the given templates,
// which already made a budget for one of them (live, or deleted by an operator: either way the
// template must not make another; a pruned one does not count). Without templates it is one
// statement; with them both reads share one snapshot (a read-only REPEATABLE READ
// transaction): read in two snapshots, a budget another replica committed between them was
// "made" but not loaded, and the subject's request went through without its default budget.
func (s *Store) LoadBudgets(ctx context.Context, subjects []string, templateIDs []int64) ([]BudgetRow, []TemplateSubject, error) {
	const liveSQL = `SELECT ` + budgetCols + ` FROM budgets WHERE subject = ANY ($1) AND deleted_at IS NULL ORDER BY id`
	if len(templateIDs) == 0 {
		rows, err := s.pool.Query(ctx, liveSQL, subjects)
		if err != nil {
			return nil, nil, fmt.Errorf("load budgets: %w", interpret(err))
		}
		live, err := collectBudgets(rows)
		if err != nil {
			return nil, nil, fmt.Errorf("load budgets: %w", interpret(err))
		}
		return live, nil, nil
	}
	var live []BudgetRow
	var made []TemplateSubject
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		batch := &pgx.Batch{}
		batch.Queue(liveSQL, subjects)
		batch.Queue(`SELECT template_id, subject FROM budgets
			WHERE template_id = ANY ($1) AND subject = ANY ($2) AND pruned_at IS NULL`, templateIDs, subjects)
		br := tx.SendBatch(ctx, batch)
		defer br.Close()
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if live, err = collectBudgets(rows); err != nil {
			return err
		}
		if rows, err = br.Query(); err != nil {
			return err
		}
		made, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (TemplateSubject, error) {
			var t TemplateSubject
			err := r.Scan(&t.TemplateID, &t.Subject)
			return t, err
		})
		if err != nil {
			return err
		}
		return br.Close()
	})
	if err != nil {
		return nil, nil, fmt.Errorf("load budgets: %w", interpret(err))
	}
	return live, made, nil
}

// MaterialiseBudgets makes, for each pair, the template's budget for the subject, as long as
// the template has fewer than maxPerTemplate live budgets (a negative max: no cap). It locks
// the templates involved, so replicas materialising at once respect the cap exactly; a pair
// another replica made meanwhile, or whose subject already has a live budget of the template's
// name, makes nothing. It returns the pairs it made.
func (s *Store) MaterialiseBudgets(ctx context.Context, pairs []TemplateSubject, maxPerTemplate int64) ([]TemplateSubject, error) {
	tids, subjects := make([]int64, len(pairs)), make([]string, len(pairs))
	for i, p := range pairs {
		tids[i], subjects[i] = p.TemplateID, p.Subject
	}
	if maxPerTemplate < 0 {
		maxPerTemplate = 1 << 62
	}
	var made []TemplateSubject
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// Serialise materialisation per template (FOR NO KEY UPDATE still lets the budgets'
		// foreign key checks through), then count in a fresh snapshot.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM budget_templates WHERE id = ANY ($1) ORDER BY id FOR NO KEY UPDATE`, tids); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
WITH want AS (
    SELECT DISTINCT w.template_id, w.subject FROM unnest($1::bigint[], $2::text[]) AS w(template_id, subject)),
room AS (
    SELECT t.id, $3::bigint - (SELECT count(*) FROM budgets b WHERE b.template_id = t.id AND b.deleted_at IS NULL) AS n
      FROM budget_templates t
     WHERE t.id IN (SELECT template_id FROM want) AND t.deleted_at IS NULL),
ranked AS (
    SELECT w.template_id, w.subject, row_number() OVER (PARTITION BY w.template_id ORDER BY w.subject) AS k
      FROM want w
     WHERE NOT EXISTS (SELECT 1 FROM budgets b WHERE b.template_id = w.template_id AND b.subject = w.subject AND b.pruned_at IS NULL))
INSERT INTO budgets (name, subject, unit, limit_amount, window_kind, time_zone, anchor_day,
        rolling_seconds, hard, warn_at, models, endpoints, route_match, template_id)
SELECT t.name, r.subject, t.unit, t.limit_amount, t.window_kind, t.time_zone, t.anchor_day,
       t.rolling_seconds, t.hard, t.warn_at, t.models, t.endpoints, t.route_match, t.id
  FROM ranked r
  JOIN room ON room.id = r.template_id AND r.k <= room.n
  JOIN budget_templates t ON t.id = r.template_id
 ORDER BY t.id, r.subject
ON CONFLICT DO NOTHING
RETURNING template_id, subject`, tids, subjects, maxPerTemplate)
		if err != nil {
			return err
		}
		made, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (TemplateSubject, error) {
			var t TemplateSubject
			err := r.Scan(&t.TemplateID, &t.Subject)
			return t, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("materialise default budgets: %w", interpret(err))
	}
	return made, nil
}

// PruneIdleBudgets soft-deletes, up to limit, budgets made by a template that are idle: never
// edited or reset since they were made, made more than idle ago, without grants, nothing
// pending and nothing posted in a window that ended less than idle ago (so their current
// window is empty, and a budget made afresh from the template starts exactly where they
// stand; for a rolling budget, nothing posted within its span either). Their windows and holds stay: history and reconciliation are unchanged. It returns
// how many it pruned.
func (s *Store) PruneIdleBudgets(ctx context.Context, idle time.Duration, limit int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `
WITH idle AS (
    SELECT b.id FROM budgets b
     WHERE b.template_id IS NOT NULL AND b.deleted_at IS NULL
       AND b.updated_at = b.created_at AND b.reset_at IS NULL
       AND b.created_at < now() - $1::bigint * interval '1 microsecond'
       AND NOT EXISTS (SELECT 1 FROM budget_grants g WHERE g.budget_id = b.id)
       AND NOT EXISTS (SELECT 1 FROM budget_windows w
                        WHERE w.budget_id = b.id
                          AND (w.pending > 0
                               OR (w.posted > 0
                                   AND w.window_end > now() - greatest($1::bigint * interval '1 microsecond',
                                                                       coalesce(b.rolling_seconds, 0) * interval '1 second'))))
     ORDER BY b.id
     LIMIT $2
       FOR UPDATE SKIP LOCKED)
UPDATE budgets b SET deleted_at = now(), pruned_at = now()
  FROM idle WHERE b.id = idle.id`, idle.Microseconds(), limit)
	if err != nil {
		return 0, fmt.Errorf("prune idle budgets: %w", interpret(err))
	}
	return tag.RowsAffected(), nil
}
