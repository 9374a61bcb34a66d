package admin

import (
	"math"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Wire representations, exported for clients (the purser CLI decodes the answers into them).
// Lists are never null; optional times are null when unset.

// Key is an API key as the admin API shows it.
type Key struct {
	ID            string     `json:"id"`
	Key           string     `json:"key,omitempty"` // the secret: only when created or rotated
	Prefix        string     `json:"prefix"`
	Name          string     `json:"name"`
	Subjects      []string   `json:"subjects"`
	AllowedModels []string   `json:"allowed_models"`
	ExpiresAt     *time.Time `json:"expires_at"`
	State         string     `json:"state"` // active | revoked | expired
	RevokedAt     *time.Time `json:"revoked_at"`
	RotatedAt     *time.Time `json:"rotated_at"`
	CreatedAt     time.Time  `json:"created_at"`
}

func toKey(k budget.Key, now time.Time) Key {
	out := Key{
		ID: k.ID, Prefix: k.Prefix, Name: k.Name, Subjects: []string{}, AllowedModels: []string{},
		ExpiresAt: optTime(k.ExpiresAt), RevokedAt: optTime(k.RevokedAt), RotatedAt: optTime(k.RotatedAt),
		CreatedAt: k.CreatedAt.UTC(), State: "active",
	}
	for _, s := range k.Subjects {
		out.Subjects = append(out.Subjects, string(s))
	}
	for _, m := range k.AllowedModels {
		out.AllowedModels = append(out.AllowedModels, string(m))
	}
	switch {
	case !k.RevokedAt.IsZero():
		out.State = "revoked"
	case !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt):
		out.State = "expired"
	}
	return out
}

// Budget is a budget, or a template (SubjectKind set, Subject empty), as the admin API shows it.
type Budget struct {
	ID          int64             `json:"id"`
	Name        string            `json:"name"`
	Subject     string            `json:"subject,omitempty"`
	SubjectKind string            `json:"subject_kind,omitempty"`
	Unit        string            `json:"unit"`
	Limit       string            `json:"limit"`
	Window      string            `json:"window"`
	Timezone    string            `json:"timezone"`
	AnchorDay   int               `json:"anchor_day"`
	Hard        bool              `json:"hard"`
	WarnAt      []int             `json:"warn_at"`
	Models      []string          `json:"models"`
	Endpoints   []string          `json:"endpoints"`
	Route       map[string]string `json:"route"`
	TemplateID  *int64            `json:"template_id,omitempty"`
	SetBy       string            `json:"set_by,omitempty"` // admin | manager (budgets only)
	ResetAt     *time.Time        `json:"reset_at,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	Current     *Window           `json:"current,omitempty"`
}

func toBudget(b budget.Budget) Budget {
	d := b.Definition()
	out := Budget{
		ID: b.ID, Name: b.Name, Subject: string(b.Subject), Unit: string(b.Unit), Limit: FormatAmount(b.Unit, b.Limit),
		Window: d.Window, Timezone: d.TimeZone, AnchorDay: d.AnchorDay, Hard: b.Hard, WarnAt: nonNil(d.WarnAt),
		Models: nonNil(d.Models), Endpoints: nonNil(d.Endpoints), Route: d.Route, ResetAt: optTime(b.ResetAt),
		CreatedAt: b.CreatedAt.UTC(), UpdatedAt: b.UpdatedAt.UTC(), SetBy: string(b.SetBy),
	}
	if out.Timezone == "" {
		out.Timezone = "UTC"
	}
	if out.Route == nil {
		out.Route = map[string]string{}
	}
	if b.TemplateID != 0 {
		id := b.TemplateID
		out.TemplateID = &id
	}
	return out
}

func toTemplate(t budget.Template) Budget {
	out := toBudget(t.Budget)
	out.Subject, out.SubjectKind, out.SetBy = "", t.SubjectKind, ""
	return out
}

// Window is a budget's current window, as the admin API shows it.
type Window struct {
	WindowStart time.Time  `json:"window_start"`
	WindowEnd   *time.Time `json:"window_end"` // null for lifetime budgets
	// Limit includes the grants in force; BaseLimit is the budget's own.
	Limit       string  `json:"limit"`
	BaseLimit   string  `json:"base_limit"`
	Grants      []Grant `json:"grants"`
	Posted      string  `json:"posted"`
	Pending     string  `json:"pending"`
	Remaining   string  `json:"remaining"`
	Utilization int     `json:"utilization"`
	BurnPerDay  string  `json:"burn_per_day"`
	// Projected is the spend at the window's end if the burn rate holds.
	Projected          string     `json:"projected"`
	ResetsAt           *time.Time `json:"resets_at"`
	DaysUntilReset     *float64   `json:"days_until_reset"`
	DaysUntilExhausted *float64   `json:"days_until_exhausted"` // null: not at this rate
	RunsOutBeforeReset bool       `json:"runs_out_before_reset"`
}

func toWindow(st budget.Status) *Window {
	u := st.Budget.Unit
	w := &Window{
		WindowStart: st.Window.Start.UTC(), Limit: FormatAmount(u, st.Limit), BaseLimit: FormatAmount(u, st.BaseLimit),
		Grants: []Grant{}, Posted: FormatAmount(u, st.Posted), Pending: FormatAmount(u, st.Pending),
		Remaining: FormatAmount(u, st.Remaining), Utilization: st.Utilization, BurnPerDay: FormatAmount(u, st.BurnPerDay),
		Projected: FormatAmount(u, st.Projected), RunsOutBeforeReset: st.RunsOutBeforeReset,
	}
	if st.Budget.Window.Kind != budget.Lifetime {
		end := st.Window.End.UTC()
		w.WindowEnd, w.ResetsAt = &end, &end
		w.DaysUntilReset = days(st.UntilReset)
	}
	if st.UntilExhausted > 0 {
		w.DaysUntilExhausted = days(st.UntilExhausted)
	} else if st.Remaining <= 0 {
		zero := 0.0
		w.DaysUntilExhausted = &zero
	}
	for _, g := range st.Grants {
		w.Grants = append(w.Grants, toGrant(g, u))
	}
	return w
}

// days is d in days, rounded to two decimals (a display figure, not an amount).
func days(d time.Duration) *float64 {
	v := math.Round(d.Hours()/24*100) / 100
	return &v
}

// Grant is a temporary raise of a budget's limit, as the admin API shows it.
type Grant struct {
	ID        int64     `json:"id"`
	BudgetID  int64     `json:"budget_id"`
	Amount    string    `json:"amount"`
	StartsAt  time.Time `json:"starts_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Reason    string    `json:"reason"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

func toGrant(g budget.Grant, unit budget.Unit) Grant {
	return Grant{ID: g.ID, BudgetID: g.BudgetID, Amount: FormatAmount(unit, g.Amount), StartsAt: g.StartsAt.UTC(),
		ExpiresAt: g.ExpiresAt.UTC(), Reason: g.Reason, CreatedBy: g.CreatedBy, CreatedAt: g.CreatedAt.UTC()}
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
