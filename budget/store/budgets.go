package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// BudgetRow is a row of budgets (or, with TemplateKind set, of budget_templates).
type BudgetRow struct {
	ID             int64
	Name           string
	Subject        string // budgets only
	SubjectKind    string // templates only
	Unit           string
	Limit          int64
	WindowKind     string
	TimeZone       string
	AnchorDay      *int16
	RollingSeconds *int64
	Hard           bool
	WarnAt         []int16
	Models         []string
	Endpoints      []string
	RouteMatch     map[string]string
	ResetAt        *time.Time
	TemplateID     *int64
	CreatedAt      time.Time
	UpdatedAt      time.Time
	// SetByRole is the role that last set a budget: "admin" or "manager" (budgets only; ""
	// on writes means "admin").
	SetByRole string
}

const budgetCols = `id, name, subject, unit, limit_amount, window_kind, time_zone, anchor_day, rolling_seconds,
	hard, warn_at, models, endpoints, route_match, reset_at, template_id, created_at, updated_at, set_by_role`

func scanBudget(row pgx.Row) (BudgetRow, error) {
	var b BudgetRow
	var route []byte
	err := row.Scan(&b.ID, &b.Name, &b.Subject, &b.Unit, &b.Limit, &b.WindowKind, &b.TimeZone, &b.AnchorDay,
		&b.RollingSeconds, &b.Hard, &b.WarnAt, &b.Models, &b.Endpoints, &route, &b.ResetAt, &b.TemplateID,
		&b.CreatedAt, &b.UpdatedAt, &b.SetByRole)
	if err != nil {
		return BudgetRow{}, err
	}
	if err := json.Unmarshal(route, &b.RouteMatch); err != nil {
		return BudgetRow{}, fmt.Errorf("budget %d route_match: %w", b.ID, err)
	}
	return b, nil
}

func collectBudgets(rows pgx.Rows) ([]BudgetRow, error) {
	defer rows.Close()
	var out []BudgetRow
	for rows.Next() {
		b, err := scanBudget(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// BudgetByID returns a live budget.
func (s *Store) BudgetByID(ctx context.Context, id int64) (BudgetRow, error) {
	b, err := scanBudget(s.pool.QueryRow(ctx, `SELECT `+budgetCols+` FROM budgets WHERE id = $1 AND deleted_at IS NULL`, id))
	if err != nil {
		return BudgetRow{}, fmt.Errorf("budget %d: %w", id, interpret(err))
	}
	return b, nil
}

// BudgetPage selects a page of live budgets in id order.
type BudgetPage struct {
	Subject  string   // only this subject's budgets; "" for every budget
	Subjects []string // only these subjects' budgets (when not nil)
	// Search keeps budgets whose subject starts with it or whose name contains it
	// (case-insensitively); "" for all.
	Search string
	// Scope keeps only the budgets a manager administers (nil: all).
	Scope    *ScopeFilter
	AfterID  int64 // only budgets with a greater id (0: from the first)
	BeforeID int64 // only budgets with a smaller id, the page nearest it (0: no bound)
	Limit    int   // at most this many budgets; 0 for all
}

// ListBudgets returns a page of live budgets, in id order. With BeforeID the page is the one
// just before that id (read backwards, returned in id order).
func (s *Store) ListBudgets(ctx context.Context, p BudgetPage) ([]BudgetRow, error) {
	scope := scopeArgs(p.Scope)
	order := `ORDER BY id`
	if p.BeforeID > 0 {
		order = `ORDER BY id DESC`
	}
	q := `SELECT ` + budgetCols + ` FROM budgets b
		WHERE deleted_at IS NULL AND ($1 = '' OR subject = $1) AND id > $2 AND ($4::bigint = 0 OR id < $4::bigint)
		  AND ($5::text[] IS NULL OR subject = ANY ($5))
		  AND ($6 = '' OR starts_with(lower(subject), lower($6)) OR strpos(lower(name), lower($6)) > 0)
		  AND ` + coveredSubject(`b.subject`, p.Scope, 7) + `
		` + order + ` LIMIT $3`
	rows, err := s.pool.Query(ctx, q, append([]any{p.Subject, p.AfterID, limitOrAll(p.Limit), p.BeforeID, p.Subjects, p.Search}, scope...)...)
	if err != nil {
		return nil, fmt.Errorf("list budgets: %w", interpret(err))
	}
	out, err := collectBudgets(rows)
	if err != nil {
		return nil, fmt.Errorf("list budgets: %w", interpret(err))
	}
	if p.BeforeID > 0 {
		slices.Reverse(out)
	}
	return out, nil
}

// setBy is a budget's set_by_role as written: "admin" unless a manager set it.
func setBy(role string) string {
	if role == "" {
		return "admin"
	}
	return role
}

func routeJSON(m map[string]string) []byte {
	if m == nil {
		m = map[string]string{}
	}
	b, _ := json.Marshal(m) // a map of strings always marshals
	return b
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// CreateBudget inserts a budget and returns it as stored.
func (s *Store) CreateBudget(ctx context.Context, b BudgetRow, a Audit) (BudgetRow, error) {
	var out BudgetRow
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanBudget(q.QueryRow(ctx, `INSERT INTO budgets (name, subject, unit, limit_amount, window_kind,
			time_zone, anchor_day, rolling_seconds, hard, warn_at, models, endpoints, route_match, set_by_role)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		RETURNING `+budgetCols,
			b.Name, b.Subject, b.Unit, b.Limit, b.WindowKind, b.TimeZone, b.AnchorDay, b.RollingSeconds, b.Hard,
			nonNil(b.WarnAt), nonNil(b.Models), nonNil(b.Endpoints), routeJSON(b.RouteMatch), setBy(b.SetByRole)))
		a.Target = fmt.Sprintf("budget:%d", out.ID)
		return err
	})
	if err != nil {
		return BudgetRow{}, fmt.Errorf("create budget: %w", interpret(err))
	}
	return out, nil
}

// UpdateBudget replaces a live budget's definition (subject and template link stay).
func (s *Store) UpdateBudget(ctx context.Context, b BudgetRow, a Audit) (BudgetRow, error) {
	var out BudgetRow
	a.Target = fmt.Sprintf("budget:%d", b.ID)
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanBudget(q.QueryRow(ctx, `UPDATE budgets SET name = $2, unit = $3, limit_amount = $4,
			window_kind = $5, time_zone = $6, anchor_day = $7, rolling_seconds = $8, hard = $9, warn_at = $10,
			models = $11, endpoints = $12, route_match = $13, set_by_role = $14, updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL
		RETURNING `+budgetCols,
			b.ID, b.Name, b.Unit, b.Limit, b.WindowKind, b.TimeZone, b.AnchorDay, b.RollingSeconds, b.Hard,
			nonNil(b.WarnAt), nonNil(b.Models), nonNil(b.Endpoints), routeJSON(b.RouteMatch), setBy(b.SetByRole)))
		return err
	})
	if err != nil {
		return BudgetRow{}, fmt.Errorf("update budget %d: %w", b.ID, interpret(err))
	}
	return out, nil
}

// DeleteBudget soft-deletes a budget: it stops applying; its windows stay as history.
func (s *Store) DeleteBudget(ctx context.Context, id int64, a Audit) error {
	a.Target = fmt.Sprintf("budget:%d", id)
	err := s.mutate(ctx, &a, func(q querier) error {
		tag, err := q.Exec(ctx, `UPDATE budgets SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL`, id)
		if err == nil && tag.RowsAffected() == 0 {
			err = pgx.ErrNoRows
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete budget %d: %w", id, interpret(err))
	}
	return nil
}

// ResetBudget starts a fresh window for the budget at the database's now and returns that instant.
func (s *Store) ResetBudget(ctx context.Context, id int64, a Audit) (time.Time, error) {
	var at time.Time
	a.Target = fmt.Sprintf("budget:%d", id)
	err := s.mutate(ctx, &a, func(q querier) error {
		return q.QueryRow(ctx, `UPDATE budgets SET reset_at = now(), updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL RETURNING reset_at`, id).Scan(&at)
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("reset budget %d: %w", id, interpret(err))
	}
	return at, nil
}

const templateCols = `id, name, subject_kind, unit, limit_amount, window_kind, time_zone, anchor_day, rolling_seconds,
	hard, warn_at, models, endpoints, route_match, created_at, updated_at`

func scanTemplate(row pgx.Row) (BudgetRow, error) {
	var b BudgetRow
	var route []byte
	err := row.Scan(&b.ID, &b.Name, &b.SubjectKind, &b.Unit, &b.Limit, &b.WindowKind, &b.TimeZone, &b.AnchorDay,
		&b.RollingSeconds, &b.Hard, &b.WarnAt, &b.Models, &b.Endpoints, &route, &b.CreatedAt, &b.UpdatedAt)
	if err != nil {
		return BudgetRow{}, err
	}
	if err := json.Unmarshal(route, &b.RouteMatch); err != nil {
		return BudgetRow{}, fmt.Errorf("template %d route_match: %w", b.ID, err)
	}
	return b, nil
}

// CreateTemplate inserts a default-budget template.
func (s *Store) CreateTemplate(ctx context.Context, b BudgetRow, a Audit) (BudgetRow, error) {
	var out BudgetRow
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanTemplate(q.QueryRow(ctx, `INSERT INTO budget_templates (name, subject_kind, unit, limit_amount,
			window_kind, time_zone, anchor_day, rolling_seconds, hard, warn_at, models, endpoints, route_match)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
		RETURNING `+templateCols,
			b.Name, b.SubjectKind, b.Unit, b.Limit, b.WindowKind, b.TimeZone, b.AnchorDay, b.RollingSeconds, b.Hard,
			nonNil(b.WarnAt), nonNil(b.Models), nonNil(b.Endpoints), routeJSON(b.RouteMatch)))
		a.Target = fmt.Sprintf("template:%d", out.ID)
		return err
	})
	if err != nil {
		return BudgetRow{}, fmt.Errorf("create template: %w", interpret(err))
	}
	return out, nil
}

// ListTemplates returns the live templates.
func (s *Store) ListTemplates(ctx context.Context) ([]BudgetRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+templateCols+` FROM budget_templates WHERE deleted_at IS NULL ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", interpret(err))
	}
	defer rows.Close()
	var out []BudgetRow
	for rows.Next() {
		b, err := scanTemplate(rows)
		if err != nil {
			return nil, fmt.Errorf("list templates: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list templates: %w", interpret(err))
	}
	return out, nil
}

// UpdateTemplate replaces a template's definition; budgets already made from it keep theirs.
func (s *Store) UpdateTemplate(ctx context.Context, b BudgetRow, a Audit) (BudgetRow, error) {
	var out BudgetRow
	a.Target = fmt.Sprintf("template:%d", b.ID)
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanTemplate(q.QueryRow(ctx, `UPDATE budget_templates SET subject_kind = $2, unit = $3,
			limit_amount = $4, window_kind = $5, time_zone = $6, anchor_day = $7, rolling_seconds = $8, hard = $9,
			warn_at = $10, models = $11, endpoints = $12, route_match = $13, name = $14, updated_at = now()
		WHERE id = $1 AND deleted_at IS NULL
		RETURNING `+templateCols,
			b.ID, b.SubjectKind, b.Unit, b.Limit, b.WindowKind, b.TimeZone, b.AnchorDay, b.RollingSeconds, b.Hard,
			nonNil(b.WarnAt), nonNil(b.Models), nonNil(b.Endpoints), routeJSON(b.RouteMatch), b.Name))
		return err
	})
	if err != nil {
		return BudgetRow{}, fmt.Errorf("update template %d: %w", b.ID, interpret(err))
	}
	return out, nil
}

// DeleteTemplate stops a template from applying to new subjects.
func (s *Store) DeleteTemplate(ctx context.Context, id int64, a Audit) error {
	a.Target = fmt.Sprintf("template:%d", id)
	err := s.mutate(ctx, &a, func(q querier) error {
		tag, err := q.Exec(ctx, `UPDATE budget_templates SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL`, id)
		if err == nil && tag.RowsAffected() == 0 {
			err = pgx.ErrNoRows
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete template %d: %w", id, interpret(err))
	}
	return nil
}

// GrantRow is a temporary limit increase.
type GrantRow struct {
	ID        int64
	BudgetID  int64
	Amount    int64
	StartsAt  time.Time
	ExpiresAt time.Time
	Reason    string
	CreatedBy string
	CreatedAt time.Time
}

// CreateGrant adds a temporary increase to a live budget.
func (s *Store) CreateGrant(ctx context.Context, g GrantRow, a Audit) (GrantRow, error) {
	a.Target = fmt.Sprintf("budget:%d", g.BudgetID)
	err := s.mutate(ctx, &a, func(q querier) error {
		return q.QueryRow(ctx, `INSERT INTO budget_grants (budget_id, amount, starts_at, expires_at, reason, created_by)
		SELECT id, $2, coalesce($3, now()), $4, $5, $6 FROM budgets WHERE id = $1 AND deleted_at IS NULL
		RETURNING id, budget_id, amount, starts_at, expires_at, reason, created_by, created_at`,
			g.BudgetID, g.Amount, nullTime(g.StartsAt), g.ExpiresAt, g.Reason, g.CreatedBy).
			Scan(&g.ID, &g.BudgetID, &g.Amount, &g.StartsAt, &g.ExpiresAt, &g.Reason, &g.CreatedBy, &g.CreatedAt)
	})
	if err != nil {
		return GrantRow{}, fmt.Errorf("grant on budget %d: %w", g.BudgetID, interpret(err))
	}
	return g, nil
}

// ActiveGrants returns the grants in force now (database clock) on the given budgets.
func (s *Store) ActiveGrants(ctx context.Context, budgetIDs []int64) ([]GrantRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT g.id, g.budget_id, g.amount, g.starts_at, g.expires_at, g.reason, g.created_by, g.created_at
		FROM (SELECT DISTINCT t.id FROM unnest(@budget_ids::bigint[]) AS t(id)) AS b
		CROSS JOIN LATERAL purser_grants_in_force(p_budget_id => b.id, p_from => now(), p_until => now()) AS g
		ORDER BY g.id`, pgx.StrictNamedArgs{"budget_ids": budgetIDs})
	if err != nil {
		return nil, fmt.Errorf("active grants: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (GrantRow, error) {
		var g GrantRow
		err := r.Scan(&g.ID, &g.BudgetID, &g.Amount, &g.StartsAt, &g.ExpiresAt, &g.Reason, &g.CreatedBy, &g.CreatedAt)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("active grants: %w", interpret(err))
	}
	return out, nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// WindowRow is one window counter.
type WindowRow struct {
	BudgetID int64
	Start    time.Time
	End      time.Time
	Posted   int64
	Pending  int64
}

// WindowSums returns, per requested (budget, from, to], the summed counters of the window rows
// whose start lies in [from, to] — one row for calendar windows, the buckets for rolling ones.
func (s *Store) WindowSums(ctx context.Context, budgetIDs []int64, from, to []time.Time) ([]WindowRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT q.b, q.f, q.t, coalesce(sum(w.posted), 0)::bigint, coalesce(sum(w.pending), 0)::bigint
		FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) AS q(b, f, t)
		LEFT JOIN budget_windows w ON w.budget_id = q.b AND w.window_start >= q.f AND w.window_start <= q.t
		GROUP BY q.b, q.f, q.t`, budgetIDs, from, to)
	if err != nil {
		return nil, fmt.Errorf("window sums: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (WindowRow, error) {
		var w WindowRow
		err := r.Scan(&w.BudgetID, &w.Start, &w.End, &w.Posted, &w.Pending)
		return w, err
	})
	if err != nil {
		return nil, fmt.Errorf("window sums: %w", interpret(err))
	}
	return out, nil
}

// Now returns the database clock.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("database clock: %w", interpret(err))
	}
	return t, nil
}
