package admin

import (
	"context"
	"net/http"
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

func (s *server) createBudget(r *http.Request, c caller) (int, any, error) {
	d, err := newDefinition(r, false)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.svc.CreateBudget(r.Context(), c.actor, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, toBudget(b), nil
}

func (s *server) listBudgets(r *http.Request, _ caller) (int, any, error) {
	subject, err := querySubject(r)
	if err != nil {
		return 0, nil, err
	}
	limit, err := pageSize(r)
	if err != nil {
		return 0, nil, err
	}
	after, err := queryInt(r, "after", 0, 0, 1<<62)
	if err != nil {
		return 0, nil, err
	}
	bs, err := s.svc.Budgets(r.Context(), budget.BudgetQuery{Subject: subject, AfterID: after, Limit: limit + 1})
	if err != nil {
		return 0, nil, err
	}
	bs, next := nextPage(bs, limit, func(b budget.Budget) any { return b.ID })
	out := make([]Budget, 0, len(bs))
	for _, b := range bs {
		out = append(out, toBudget(b))
	}
	return http.StatusOK, map[string]any{"budgets": out, "next_after": next}, nil
}

// budgetWithWindow returns a live budget with its current window.
func (s *server) budgetWithWindow(ctx context.Context, id int64) (Budget, error) {
	b, err := s.svc.Budget(ctx, id)
	if err != nil {
		return Budget{}, err
	}
	out := toBudget(b)
	sts, err := s.svc.Status(ctx, b.Subject)
	if err != nil {
		return out, err
	}
	for _, st := range sts {
		if st.Budget.ID == b.ID {
			out.Current = toWindow(st)
		}
	}
	return out, nil
}

func (s *server) getBudget(r *http.Request, _ caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	out, err := s.budgetWithWindow(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, out, nil
}

func (s *server) updateBudget(r *http.Request, c caller) (int, any, error) {
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
	b, err := s.svc.UpdateBudget(r.Context(), c.actor, id, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toBudget(b), nil
}

func (s *server) deleteBudget(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	if err := s.svc.DeleteBudget(r.Context(), c.actor, id); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

func (s *server) addGrant(r *http.Request, c caller) (int, any, error) {
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
	g, err := s.svc.AddGrant(r.Context(), c.actor, id, amount, in.ExpiresAt.V, in.Reason.V)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, toGrant(g, b.Unit), nil
}

func (s *server) resetBudget(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	var reason opt[string]
	if err := decodeBody(r, true, field{"reason", &reason, wantString, true}); err != nil {
		return 0, nil, err
	}
	at, err := s.svc.ResetBudget(r.Context(), c.actor, id, reason.V)
	if err != nil {
		return 0, nil, err
	}
	out, err := s.budgetWithWindow(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"reset_at": at.UTC(), "budget": out}, nil
}

// Templates.

func (s *server) createTemplate(r *http.Request, c caller) (int, any, error) {
	d, err := newDefinition(r, true)
	if err != nil {
		return 0, nil, err
	}
	b, err := s.svc.CreateTemplate(r.Context(), c.actor, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, toTemplate(budget.Template{Budget: b, SubjectKind: d.Kind}), nil
}

func (s *server) listTemplates(r *http.Request, _ caller) (int, any, error) {
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

func (s *server) template(ctx context.Context, id int64) (budget.Template, error) {
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

func (s *server) getTemplate(r *http.Request, _ caller) (int, any, error) {
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

func (s *server) updateTemplate(r *http.Request, c caller) (int, any, error) {
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
	b, err := s.svc.UpdateTemplate(r.Context(), c.actor, id, d)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toTemplate(budget.Template{Budget: b, SubjectKind: d.Kind}), nil
}

func (s *server) deleteTemplate(r *http.Request, c caller) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	if err := s.svc.DeleteTemplate(r.Context(), c.actor, id); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}
