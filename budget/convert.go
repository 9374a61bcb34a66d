package budget

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// mapErr translates store errors into this package's sentinels, keeping the cause.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, store.ErrBudgetNameTaken):
		return fmt.Errorf("%w: %w: %w", ErrConflict, ErrBudgetNameTaken, err)
	case errors.Is(err, store.ErrTemplateNameTaken):
		return fmt.Errorf("%w: %w: %w", ErrConflict, ErrTemplateNameTaken, err)
	case errors.Is(err, store.ErrConflict):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case errors.Is(err, store.ErrUnavailable):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func budgetFromRow(r store.BudgetRow) (Budget, error) {
	d := Definition{
		Name: r.Name, Subject: r.Subject, Kind: r.SubjectKind, Unit: r.Unit, Limit: r.Limit,
		Window: r.WindowKind, TimeZone: r.TimeZone, Hard: r.Hard, Models: r.Models,
		Endpoints: r.Endpoints, Route: r.RouteMatch,
	}
	if r.RollingSeconds != nil {
		d.Window = (time.Duration(*r.RollingSeconds) * time.Second).String()
	}
	if r.AnchorDay != nil {
		d.AnchorDay = int(*r.AnchorDay)
	}
	for _, w := range r.WarnAt {
		d.WarnAt = append(d.WarnAt, int(w))
	}
	legacy := ""
	if _, err := ParseSubject(r.Subject); d.Kind == "" && err != nil && r.Subject != "" {
		legacy, d.Subject = r.Subject, KindGlobal // validated as written: see storedSubjects
	}
	b, err := d.Build()
	if err != nil {
		return Budget{}, fmt.Errorf("stored budget %d is invalid: %w", r.ID, err)
	}
	if legacy != "" {
		b.Subject = Subject(legacy)
	}
	b.ID = r.ID
	b.CreatedAt, b.UpdatedAt = r.CreatedAt, r.UpdatedAt
	if r.ResetAt != nil {
		b.ResetAt = *r.ResetAt
	}
	if r.TemplateID != nil {
		b.TemplateID = *r.TemplateID
	}
	b.SetBy = RoleAdmin
	if r.SetByRole == string(RoleManager) {
		b.SetBy = RoleManager
	}
	return b, nil
}

func budgetToRow(b Budget, kind string) store.BudgetRow {
	r := store.BudgetRow{
		ID: b.ID, Name: b.Name, Subject: string(b.Subject), SubjectKind: kind, Unit: string(b.Unit),
		Limit: b.Limit, WindowKind: string(b.Window.Kind), TimeZone: "UTC", Hard: b.Hard,
		RouteMatch: b.RouteMatch, SetByRole: string(b.SetBy),
	}
	if b.Window.Location != nil {
		r.TimeZone = b.Window.Location.String()
	}
	if b.Window.AnchorDay > 0 {
		a := int16(b.Window.AnchorDay)
		r.AnchorDay = &a
	}
	if b.Window.Kind == Rolling {
		secs := int64(b.Window.Rolling / time.Second)
		r.RollingSeconds = &secs
	}
	for _, w := range b.WarnAt {
		r.WarnAt = append(r.WarnAt, int16(w))
	}
	for _, m := range b.Models {
		r.Models = append(r.Models, string(m))
	}
	for _, e := range b.Endpoints {
		r.Endpoints = append(r.Endpoints, string(e))
	}
	return r
}

// storedSubjects returns the subjects of a row read back from the database. A subject stored
// before ParseSubject's rules tightened (',' and format characters such as U+202E were once
// accepted by the admin API) is returned as stored: refusing it would lock its key out of
// every request and break every list that holds it, while no request-side subject can equal
// it any more. Writes always go through ParseSubject.
func storedSubjects(ss []string) []Subject {
	out := make([]Subject, 0, len(ss))
	for _, s := range ss {
		if s == "" {
			continue
		}
		sub := Subject(s)
		if !slices.Contains(out, sub) {
			out = append(out, sub)
		}
	}
	return out
}

func keyFromRow(r store.KeyRow) (Key, error) {
	k := Key{ID: r.ID, Name: r.Name, Prefix: r.Prefix, CreatedAt: r.CreatedAt}
	k.Subjects = storedSubjects(r.Subjects)
	for _, m := range r.AllowedModels {
		g, err := ParseGlob(m)
		if err != nil {
			return Key{}, fmt.Errorf("stored key %s: allowed model %q: %w", r.ID, m, err)
		}
		k.AllowedModels = append(k.AllowedModels, g)
	}
	if r.ExpiresAt != nil {
		k.ExpiresAt = *r.ExpiresAt
	}
	if r.RevokedAt != nil {
		k.RevokedAt = *r.RevokedAt
	}
	if r.RotatedAt != nil {
		k.RotatedAt = *r.RotatedAt
	}
	return k, nil
}
