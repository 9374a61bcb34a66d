package budget

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/purser-dev/purser/budget/store"
)

// This file holds the rules of who may change what (see Role): every *As method of the
// Service asks them before it writes.

// permitChange refuses actors that may change nothing.
func permitChange(by Actor) error {
	switch by.Role {
	case RoleAdmin, RoleManager:
		return nil
	case RoleViewer:
		return forbidden("a viewer cannot change anything")
	}
	return forbidden("unknown role %q", by.Role)
}

// permitKeyOwners checks that by may manage a key with these owner subjects: a manager only
// when the key has owners and every one is within its scope.
func permitKeyOwners(by Actor, owners []string) error {
	if err := permitChange(by); err != nil || by.Role != RoleManager {
		return err
	}
	if len(owners) == 0 {
		return forbidden("a manager's key needs owner subjects within its scope (%s)", strings.Join(by.Scope, ", "))
	}
	for _, o := range owners {
		if !by.Scope.coversOwner(Subject(o)) {
			return forbidden("subject %s is outside your scope (%s)", o, strings.Join(by.Scope, ", "))
		}
	}
	return nil
}

// permitKey checks that by may change the key id.
func (s *Service) permitKey(ctx context.Context, by Actor, id string) error {
	if err := permitChange(by); err != nil || by.Role != RoleManager {
		return err
	}
	cur, err := s.db.KeyByID(ctx, id)
	if err != nil {
		return mapErr(err)
	}
	return permitKeyOwners(by, cur.Subjects)
}

// Covers reports whether scope covers subject, reading the key's owners for a key: subject.
func (s *Service) Covers(ctx context.Context, scope Scope, subject Subject) (bool, error) {
	if subject.Kind() != KindKey {
		return scope.Covers(subject, nil), nil
	}
	owners, err := s.keyOwners(ctx, subject)
	if err != nil {
		return false, err
	}
	return scope.Covers(subject, owners), nil
}

// keyOwners returns the owners of the key of a key: subject (nil for an unknown key).
func (s *Service) keyOwners(ctx context.Context, subject Subject) ([]Subject, error) {
	row, err := s.db.KeyByID(ctx, subject.ID())
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, mapErr(err)
	}
	k, err := keyFromRow(row)
	if err != nil {
		return nil, err
	}
	return k.Subjects, nil
}

// permitBudget checks that by may set a budget on subject (cur: the budget it changes, nil
// when creating one) and returns the role the budget is then set by.
func (s *Service) permitBudget(ctx context.Context, by Actor, subject Subject, cur *Budget) (Role, error) {
	if err := permitChange(by); err != nil {
		return "", err
	}
	if by.Role != RoleManager {
		return RoleAdmin, nil
	}
	ok, err := s.Covers(ctx, by.Scope, subject)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", forbidden("subject %s is outside your scope (%s)", subject, strings.Join(by.Scope, ", "))
	}
	if cur != nil && cur.SetBy != RoleManager {
		return "", forbidden("budget %d was set by an admin: a manager cannot change it", cur.ID)
	}
	return RoleManager, nil
}

// permitBudgetID is permitBudget for an existing budget, which it returns.
func (s *Service) permitBudgetID(ctx context.Context, by Actor, id int64) (Budget, error) {
	if err := permitChange(by); err != nil {
		return Budget{}, err
	}
	row, err := s.db.BudgetByID(ctx, id)
	if err != nil {
		return Budget{}, mapErr(err)
	}
	b, err := budgetFromRow(row)
	if err != nil {
		return Budget{}, err
	}
	_, err = s.permitBudget(ctx, by, b.Subject, &b)
	return b, err
}

// Ceiling returns the budget that caps what a manager may set on subject in unit over a
// window w: of the budgets an admin set on subject itself or on a wider one (see Wider), with
// the same unit and a window at least as long (nominally: a month is 31 days), the one with
// the lowest limit. ok is false when there is none.
func (s *Service) Ceiling(ctx context.Context, subject Subject, unit Unit, w WindowSpec) (Budget, bool, error) {
	var owners []Subject
	if subject.Kind() == KindKey {
		var err error
		if owners, err = s.keyOwners(ctx, subject); err != nil {
			return Budget{}, false, err
		}
	}
	subjects := []string{string(subject)}
	for _, x := range widerSubjects(subject, owners) {
		subjects = append(subjects, string(x))
	}
	rows, err := s.db.ListBudgets(ctx, store.BudgetPage{Subjects: subjects})
	if err != nil {
		return Budget{}, false, mapErr(err)
	}
	bs, err := budgetsFromRows(rows)
	if err != nil {
		return Budget{}, false, err
	}
	var best Budget
	found := false
	for _, b := range bs {
		if b.SetBy != RoleAdmin || b.Unit != unit || nominalLength(b.Window) < nominalLength(w) {
			continue
		}
		if !found || b.Limit < best.Limit {
			best, found = b, true
		}
	}
	return best, found, nil
}

// checkCeiling refuses a manager's budget b (with extra granted on top of its limit) above
// its ceiling. Admins have none.
func (s *Service) checkCeiling(ctx context.Context, by Actor, b Budget, extra int64) error {
	if by.Role != RoleManager {
		return nil
	}
	c, ok, err := s.Ceiling(ctx, b.Subject, b.Unit, b.Window)
	if err != nil || !ok {
		return err
	}
	if total := b.Limit + extra; total > c.Limit {
		what := "limit " + b.Unit.Format(b.Limit)
		if extra > 0 {
			what = fmt.Sprintf("limit %s with grants %s", b.Unit.Format(b.Limit), b.Unit.Format(extra))
		}
		return forbidden("%s %s is above budget %d %q (%s %s per %s) an admin set on %s", what, b.Unit,
			c.ID, c.Name, c.Unit.Format(c.Limit), c.Unit, c.WindowString(), c.Subject)
	}
	return nil
}
