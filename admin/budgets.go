package admin

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/purser-dev/purser/budget"
)

// defInput is a budget's or a template's editable fields as sent: on create the absent ones
// take defaults, on PATCH they keep their current value.
type defInput struct {
	Name        opt[string]
	Subject     opt[string] // budgets
	SubjectKind opt[string] // templates
	Limit       opt[string]
	Unit        opt[string]
	Window      opt[string]
	Timezone    opt[string]
	AnchorDay   opt[int]
	Hard        opt[bool]
	WarnAt      opt[[]int]
	Models      opt[[]string]
	Endpoints   opt[[]string]
	Route       opt[map[string]string]
}

func (in *defInput) fields(template bool) []field {
	fs := []field{{"name", &in.Name, wantString, false}}
	if template {
		fs = append(fs, field{"subject_kind", &in.SubjectKind, wantString, false})
	} else {
		fs = append(fs, field{"subject", &in.Subject, wantString, false})
	}
	return append(fs,
		field{"limit", &in.Limit, wantAmount, false},
		field{"unit", &in.Unit, `"usd", "tokens" or "requests"`, false},
		field{"window", &in.Window, wantString, false},
		field{"timezone", &in.Timezone, wantString, true},
		field{"anchor_day", &in.AnchorDay, wantInt, true},
		field{"hard", &in.Hard, wantBool, false},
		field{"warn_at", &in.WarnAt, wantInts, true},
		field{"models", &in.Models, wantStrings, true},
		field{"endpoints", &in.Endpoints, wantStrings, true},
		field{"route", &in.Route, wantMap, true},
	)
}

// apply overlays the present fields on d. create says d holds only defaults.
func (in *defInput) apply(d *budget.Definition, create bool) error {
	if in.Name.Set {
		d.Name = in.Name.V
	}
	if in.Subject.Set {
		d.Subject = in.Subject.V
	}
	if in.SubjectKind.Set {
		d.Kind = in.SubjectKind.V
	}
	oldUnit := budget.Unit(d.Unit)
	if in.Unit.Set {
		u, err := parseUnit(in.Unit.V)
		if err != nil {
			return err
		}
		d.Unit = string(u)
	}
	unit, err := parseUnit(d.Unit)
	if err != nil {
		return err
	}
	switch {
	case in.Limit.Set:
		v, err := ParseAmount(unit, in.Limit.V)
		if err != nil {
			return invalid("limit", "%s", err)
		}
		d.Limit = v
	case create:
		return invalid("limit", "is required")
	case unit != oldUnit:
		return invalid("limit", "is required when the unit changes")
	}
	if in.Window.Set {
		d.Window = in.Window.V
	}
	if in.Timezone.Set {
		d.TimeZone = in.Timezone.V // "" (null) is UTC
	}
	if in.AnchorDay.Set {
		d.AnchorDay = in.AnchorDay.V
	}
	if in.Hard.Set {
		d.Hard = in.Hard.V
	}
	if in.WarnAt.Set {
		d.WarnAt = in.WarnAt.V
	}
	if in.Models.Set {
		d.Models = in.Models.V
	}
	if in.Endpoints.Set {
		d.Endpoints = in.Endpoints.V
	}
	if in.Route.Set {
		d.Route = in.Route.V
	}
	return nil
}

// decodeDef reads the body of a budget's or a template's POST or PATCH.
func decodeDef(r *http.Request, template bool) (defInput, error) {
	var in defInput
	err := decodeBody(r, false, in.fields(template)...)
	return in, err
}

// newDefinition reads the definition a POST creates: absent fields take their defaults.
func newDefinition(r *http.Request, template bool) (budget.Definition, error) {
	in, err := decodeDef(r, template)
	if err != nil {
		return budget.Definition{}, err
	}
	d := budget.Definition{Hard: true}
	if err := in.apply(&d, true); err != nil {
		return budget.Definition{}, err
	}
	return d, nil
}

func (s *API) createBudget(r *http.Request, c caller) (int, any, error) {
	d, err := newDefinition(r, false)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.svc.CreateBudgetAs(r.Context(), c.actor(), d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, toBudget(b), nil
}

// maxTopBudgets bounds GET /v1/budgets?sort=utilization.
const maxTopBudgets = 100

func (s *API) listBudgets(r *http.Request, c caller) (int, any, error) {
	q := r.URL.Query()
	subject, err := querySubject(r)
	if err != nil {
		return 0, nil, err
	}
	limit, err := pageSize(r)
	if err != nil {
		return 0, nil, err
	}
	withCurrent := false
	switch v := q.Get("current"); v {
	case "", "false":
	case "true":
		withCurrent = true
	default:
		return 0, nil, invalid("current", "must be true or false, got %q", v)
	}
	switch sort := q.Get("sort"); sort {
	case "", "id":
	case "utilization":
		// The most utilised budgets of their current window, one page, with their windows.
		if limit > maxTopBudgets {
			return 0, nil, invalid("limit", "must be at most %d with sort=utilization", maxTopBudgets)
		}
		sts, err := s.svc.TopBudgets(r.Context(), c.scope(), limit)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, map[string]any{"budgets": statuses(sts), "next_after": nil, "prev_before": nil}, nil
	default:
		return 0, nil, invalid("sort", "must be id or utilization, got %q", sort)
	}
	after, err := queryInt(r, "after", 0, 0, 1<<62)
	if err != nil {
		return 0, nil, err
	}
	before, err := queryInt(r, "before", 0, 0, 1<<62)
	if err != nil {
		return 0, nil, err
	}
	if after > 0 && before > 0 {
		return 0, nil, invalid("before", "cannot be combined with after")
	}
	search := q.Get("q")
	if len(search) > budget.MaxSubjectLen {
		return 0, nil, invalid("q", "is longer than %d bytes", budget.MaxSubjectLen)
	}
	bs, err := s.svc.Budgets(r.Context(), budget.BudgetQuery{Subject: subject, Search: search, Scope: c.scope(),
		AfterID: after, BeforeID: before, Limit: limit + 1})
	if err != nil {
		return 0, nil, err
	}
	// A page read backwards has its extra row first; forwards, last.
	var next, prev any
	if before > 0 {
		if len(bs) > limit {
			bs = bs[1:]
			prev = bs[0].ID
		}
		// The page holds every budget up to before: a next page exists when one is at or
		// after it.
		after, err := s.svc.Budgets(r.Context(), budget.BudgetQuery{Subject: subject, Search: search, Scope: c.scope(),
			AfterID: before - 1, Limit: 1})
		if err != nil {
			return 0, nil, err
		}
		if len(bs) > 0 && len(after) > 0 {
			next = bs[len(bs)-1].ID
		}
	} else {
		bs, next = nextPage(bs, limit, func(b budget.Budget) any { return b.ID })
		if after > 0 && len(bs) > 0 {
			prev = bs[0].ID
		}
	}
	out := make([]Budget, 0, len(bs))
	if withCurrent {
		sts, err := s.svc.StatusOf(r.Context(), bs)
		if err != nil {
			return 0, nil, err
		}
		out = statuses(sts)
	} else {
		for _, b := range bs {
			out = append(out, toBudget(b))
		}
	}
	return http.StatusOK, map[string]any{"budgets": out, "next_after": next, "prev_before": prev}, nil
}

// visibleBudget returns a live budget the caller may see: a manager only within its scope.
func (s *API) visibleBudget(ctx context.Context, c caller, id int64) (budget.Budget, error) {
	b, err := s.svc.Budget(ctx, id)
	if err != nil {
		return budget.Budget{}, err
	}
	if c.manager() {
		ok, err := s.svc.Covers(ctx, c.scope(), b.Subject)
		if err != nil {
			return budget.Budget{}, err
		}
		if !ok {
			return budget.Budget{}, outOfScope(c, fmt.Sprintf("budget %d (%s)", b.ID, b.Subject))
		}
	}
	return b, nil
}

// budgetWithWindow returns a live budget with its current window.
func (s *API) budgetWithWindow(ctx context.Context, b budget.Budget) (Budget, error) {
	sts, err := s.svc.StatusOf(ctx, []budget.Budget{b})
	if err != nil {
		return Budget{}, err
	}
	out := toBudget(b)
	out.Current = toWindow(sts[0])
	return out, nil
}

func (s *API) getBudget(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.visibleBudget(r.Context(), c, id)
	if err != nil {
		return 0, nil, err
	}
	out, err := s.budgetWithWindow(r.Context(), b)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, out, nil
}

func (s *API) budgetHistory(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	if _, err := s.visibleBudget(r.Context(), c, id); err != nil {
		return 0, nil, err
	}
	return s.history(r, id)
}

// myBudgetHistory is a key holder's view of the history of one of its own budgets.
func (s *API) myBudgetHistory(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.svc.Budget(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	if !slices.Contains(c.key().AllSubjects(), b.Subject) {
		// Not the key's: indistinguishable from a budget that does not exist.
		return 0, nil, &apiError{status: http.StatusNotFound, code: codeNotFound, msg: fmt.Sprintf("budget %d not found", id)}
	}
	return s.history(r, id)
}

// History is GET /v1/budgets/{id}/history: a budget's current window and its settled spend
// over it, per bucket, in the budget's unit.
type History struct {
	Budget        Budget         `json:"budget"`
	BucketSeconds int64          `json:"bucket_seconds"`
	Points        []HistoryPoint `json:"points"`
	Approximate   bool           `json:"approximate"`
}

// HistoryPoint is the settled spend of one bucket starting At.
type HistoryPoint struct {
	At     time.Time `json:"at"`
	Amount string    `json:"amount"`
}

func (s *API) history(r *http.Request, id int64) (int, any, error) {
	h, err := s.svc.BudgetHistory(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	b := toBudget(h.Status.Budget)
	b.Current = toWindow(h.Status)
	out := History{Budget: b, BucketSeconds: int64(h.Bucket / time.Second), Points: []HistoryPoint{}, Approximate: h.Approximate}
	for _, p := range h.Points {
		out.Points = append(out.Points, HistoryPoint{At: p.At.UTC(), Amount: FormatAmount(h.Status.Budget.Unit, p.Amount)})
	}
	return http.StatusOK, out, nil
}

func (s *API) updateBudget(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	in, err := decodeDef(r, false)
	if err != nil {
		return 0, nil, err
	}
	cur, err := s.svc.Budget(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	d := cur.Definition()
	if err := in.apply(&d, false); err != nil {
		return 0, nil, err
	}
	b, err := s.svc.UpdateBudgetAs(r.Context(), c.actor(), id, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toBudget(b), nil
}

func (s *API) deleteBudget(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	if err := s.svc.DeleteBudgetAs(r.Context(), c.actor(), id); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

func (s *API) addGrant(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	var in struct {
		Amount    opt[string]
		ExpiresAt opt[time.Time]
		Reason    opt[string]
	}
	if err := decodeBody(r, false,
		field{"amount", &in.Amount, wantAmount, false},
		field{"expires_at", &in.ExpiresAt, wantTime, false},
		field{"reason", &in.Reason, wantString, true},
	); err != nil {
		return 0, nil, err
	}
	b, err := s.svc.Budget(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	if !in.Amount.Set {
		return 0, nil, invalid("amount", "is required")
	}
	amount, err := ParseAmount(b.Unit, in.Amount.V)
	if err != nil {
		return 0, nil, invalid("amount", "%s", err)
	}
	if !in.ExpiresAt.Set {
		return 0, nil, invalid("expires_at", "is required")
	}
	g, err := s.svc.AddGrantAs(r.Context(), c.actor(), id, amount, in.ExpiresAt.V, in.Reason.V)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, toGrant(g, b.Unit), nil
}

func (s *API) resetBudget(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	var reason opt[string]
	if err := decodeBody(r, true, field{"reason", &reason, wantString, true}); err != nil {
		return 0, nil, err
	}
	at, err := s.svc.ResetBudgetAs(r.Context(), c.actor(), id, reason.V)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.svc.Budget(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	out, err := s.budgetWithWindow(r.Context(), b)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"reset_at": at.UTC(), "budget": out}, nil
}

// Templates.

func (s *API) createTemplate(r *http.Request, c caller) (int, any, error) {
	d, err := newDefinition(r, true)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.svc.CreateTemplate(r.Context(), c.actor().Name, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, toTemplate(budget.Template{Budget: b, SubjectKind: d.Kind}), nil
}

func (s *API) listTemplates(r *http.Request, _ caller) (int, any, error) {
	ts, err := s.svc.Templates(r.Context())
	if err != nil {
		return 0, nil, err
	}
	out := make([]Budget, 0, len(ts))
	for _, t := range ts {
		out = append(out, toTemplate(t))
	}
	return http.StatusOK, map[string]any{"templates": out}, nil
}

func (s *API) template(ctx context.Context, id int64) (budget.Template, error) {
	ts, err := s.svc.Templates(ctx)
	if err != nil {
		return budget.Template{}, err
	}
	for _, t := range ts {
		if t.ID == id {
			return t, nil
		}
	}
	return budget.Template{}, budget.ErrNotFound
}

func (s *API) getTemplate(r *http.Request, _ caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	t, err := s.template(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toTemplate(t), nil
}

func (s *API) updateTemplate(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	in, err := decodeDef(r, true)
	if err != nil {
		return 0, nil, err
	}
	cur, err := s.template(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	d := cur.Definition()
	d.Subject, d.Kind = "", cur.SubjectKind
	if err := in.apply(&d, false); err != nil {
		return 0, nil, err
	}
	b, err := s.svc.UpdateTemplate(r.Context(), c.actor().Name, id, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toTemplate(budget.Template{Budget: b, SubjectKind: d.Kind}), nil
}

func (s *API) deleteTemplate(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	if err := s.svc.DeleteTemplate(r.Context(), c.actor().Name, id); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}
