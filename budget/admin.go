package budget

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// KeySpec describes a key to create or update.
type KeySpec struct {
	Name          string
	Subjects      []string
	AllowedModels []string
	ExpiresAt     time.Time // zero: never
}

// validate checks a spec; keep is an expiry already stored (allowed even if past, so an
// expired key can still be renamed).
func (k KeySpec) validate(now, keep time.Time) (store.KeyRow, error) {
	var row store.KeyRow
	row.Name = k.Name
	if row.Name == "" {
		return row, &FieldError{Field: "name", Err: fmt.Errorf("is required")}
	}
	if len(row.Name) > 200 {
		return row, &FieldError{Field: "name", Err: fmt.Errorf("is longer than 200 bytes")}
	}
	subs, err := ParseSubjects(k.Subjects)
	if err != nil {
		return row, &FieldError{Field: "subjects", Err: err}
	}
	for _, s := range subs {
		if s.Kind() == KindKey {
			return row, &FieldError{Field: "subjects", Err: fmt.Errorf("%q: a key's own key: subject is implicit", s)}
		}
		row.Subjects = append(row.Subjects, string(s))
	}
	for i, m := range k.AllowedModels {
		if _, err := ParseGlob(m); err != nil {
			return row, &FieldError{Field: fmt.Sprintf("allowed_models[%d]", i), Err: err}
		}
	}
	row.AllowedModels = k.AllowedModels
	if !k.ExpiresAt.IsZero() {
		if !k.ExpiresAt.After(now) && !k.ExpiresAt.Equal(keep) {
			return row, &FieldError{Field: "expires_at", Err: fmt.Errorf("is in the past")}
		}
		t := k.ExpiresAt
		row.ExpiresAt = &t
	}
	return row, nil
}

// CreateKey issues a new key as an admin. The secret is returned once, here, and only its
// hash is stored.
func (s *Service) CreateKey(ctx context.Context, actor string, spec KeySpec) (Key, string, error) {
	return s.CreateKeyAs(ctx, AdminActor(actor), spec)
}

// CreateKeyAs issues a new key for by: a manager's key must have owner subjects, all within
// its scope.
func (s *Service) CreateKeyAs(ctx context.Context, by Actor, spec KeySpec) (Key, string, error) {
	row, err := spec.validate(s.cfg.Now(), time.Time{})
	if err != nil {
		return Key{}, "", err
	}
	if err := permitKeyOwners(by, row.Subjects); err != nil {
		return Key{}, "", err
	}
	actor := by.Name
	secret, hash, prefix, err := NewSecret()
	if err != nil {
		return Key{}, "", err
	}
	if row.ID, err = NewKeyID(); err != nil {
		return Key{}, "", err
	}
	row.SecretHash, row.Prefix = hash[:], prefix
	out, err := s.db.CreateKey(ctx, row, store.Audit{Actor: actor, Action: "key.create", Details: map[string]any{
		"name": row.Name, "prefix": prefix, "subjects": row.Subjects, "allowed_models": row.AllowedModels, "expires_at": row.ExpiresAt,
	}})
	if err != nil {
		return Key{}, "", mapErr(err)
	}
	s.keyIdx.add(hash)
	s.Invalidate()
	k, err := keyFromRow(out)
	return k, secret, err
}

// UpdateKey changes a key's name, subjects, allowed models and expiry, as an admin.
func (s *Service) UpdateKey(ctx context.Context, actor, id string, spec KeySpec) (Key, error) {
	return s.UpdateKeyAs(ctx, AdminActor(actor), id, spec)
}

// UpdateKeyAs changes a key for by: a manager may change only a key it administers, and only
// to owners within its scope.
func (s *Service) UpdateKeyAs(ctx context.Context, by Actor, id string, spec KeySpec) (Key, error) {
	cur, err := s.db.KeyByID(ctx, id)
	if err != nil {
		return Key{}, mapErr(err)
	}
	if err := permitKeyOwners(by, cur.Subjects); err != nil {
		return Key{}, err
	}
	actor := by.Name
	var keep time.Time
	if cur.ExpiresAt != nil {
		keep = *cur.ExpiresAt
	}
	row, err := spec.validate(s.cfg.Now(), keep)
	if err != nil {
		return Key{}, err
	}
	if err := permitKeyOwners(by, row.Subjects); err != nil {
		return Key{}, err
	}
	row.ID = id
	out, err := s.db.UpdateKey(ctx, row, store.Audit{Actor: actor, Action: "key.update", Details: map[string]any{
		"name": row.Name, "subjects": row.Subjects, "allowed_models": row.AllowedModels, "expires_at": row.ExpiresAt,
	}})
	if err != nil {
		return Key{}, mapErr(err)
	}
	s.Invalidate()
	return keyFromRow(out)
}

// Key returns a key by id.
func (s *Service) Key(ctx context.Context, id string) (Key, error) {
	row, err := s.db.KeyByID(ctx, id)
	if err != nil {
		return Key{}, mapErr(err)
	}
	return keyFromRow(row)
}

// KeyQuery selects keys for Keys.
type KeyQuery struct {
	Name    string    // only keys of this name; "" for every key
	Subject string    // only keys owning this subject (their key: subject is not one); "" for all
	After   KeyCursor // continue after this key (zero: from the newest)
	Limit   int       // at most this many; 0 for all
	Scope   Scope     // only the keys a manager administers (nil: every key)
}

// KeyCursor is a position in the newest-first list of keys: the last key of a page.
type KeyCursor struct {
	CreatedAt time.Time
	ID        string
}

// CursorOf returns the position of k in the list of keys.
func CursorOf(k Key) KeyCursor { return KeyCursor{CreatedAt: k.CreatedAt, ID: k.ID} }

// Keys lists keys, newest first.
func (s *Service) Keys(ctx context.Context, q KeyQuery) ([]Key, error) {
	var scope *store.ScopeFilter
	if q.Scope != nil {
		scope = q.Scope.filter()
	}
	rows, err := s.db.ListKeys(ctx, store.KeyPage{Name: q.Name, Subject: q.Subject, AfterCreatedAt: q.After.CreatedAt,
		AfterID: q.After.ID, Limit: q.Limit, Scope: scope})
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Key, 0, len(rows))
	for _, r := range rows {
		k, err := keyFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// RevokeKey revokes a key as an admin; it stops working on every replica within moments.
func (s *Service) RevokeKey(ctx context.Context, actor, id string) (Key, error) {
	return s.RevokeKeyAs(ctx, AdminActor(actor), id)
}

// RevokeKeyAs revokes a key for by (a manager: only a key it administers).
func (s *Service) RevokeKeyAs(ctx context.Context, by Actor, id string) (Key, error) {
	if err := s.permitKey(ctx, by, id); err != nil {
		return Key{}, err
	}
	row, err := s.db.RevokeKey(ctx, id, store.Audit{Actor: by.Name, Action: "key.revoke"})
	if err != nil {
		return Key{}, mapErr(err)
	}
	s.Invalidate()
	return keyFromRow(row)
}

// RotateKey gives a live key a new secret (returned once), as an admin. The key id, its
// budgets and its history stay; the old secret stops working.
func (s *Service) RotateKey(ctx context.Context, actor, id string) (Key, string, error) {
	return s.RotateKeyAs(ctx, AdminActor(actor), id)
}

// RotateKeyAs rotates a key for by (a manager: only a key it administers).
func (s *Service) RotateKeyAs(ctx context.Context, by Actor, id string) (Key, string, error) {
	if err := s.permitKey(ctx, by, id); err != nil {
		return Key{}, "", err
	}
	actor := by.Name
	secret, hash, prefix, err := NewSecret()
	if err != nil {
		return Key{}, "", err
	}
	row, err := s.db.RotateKey(ctx, id, hash[:], prefix, store.Audit{Actor: actor, Action: "key.rotate",
		Details: map[string]any{"prefix": prefix}})
	if err != nil {
		return Key{}, "", mapErr(err)
	}
	s.keyIdx.add(hash)
	s.Invalidate()
	k, err := keyFromRow(row)
	return k, secret, err
}

// CreateBudget validates and stores a budget, as an admin.
func (s *Service) CreateBudget(ctx context.Context, actor string, d Definition) (Budget, error) {
	return s.CreateBudgetAs(ctx, AdminActor(actor), d)
}

// CreateBudgetAs validates and stores a budget for by. A manager's budget must be on a subject
// within its scope and not above a budget an admin set on the same or a wider subject (see
// ceiling).
func (s *Service) CreateBudgetAs(ctx context.Context, by Actor, d Definition) (Budget, error) {
	d.Kind = ""
	b, err := d.Build()
	if err != nil {
		return Budget{}, err
	}
	if b.SetBy, err = s.permitBudget(ctx, by, b.Subject, nil); err != nil {
		return Budget{}, err
	}
	if err := s.checkCeiling(ctx, by, b, 0); err != nil {
		return Budget{}, err
	}
	row, err := s.db.CreateBudget(ctx, budgetToRow(b, ""), store.Audit{Actor: by.Name, Action: "budget.create", Details: auditDef(d)})
	if err != nil {
		return Budget{}, mapErr(err)
	}
	s.Invalidate()
	return budgetFromRow(row)
}

// UpdateBudget replaces a budget's definition, as an admin; its subject cannot change.
func (s *Service) UpdateBudget(ctx context.Context, actor string, id int64, d Definition) (Budget, error) {
	return s.UpdateBudgetAs(ctx, AdminActor(actor), id, d)
}

// UpdateBudgetAs replaces a budget's definition for by. A manager may change only a budget a
// manager set, within its scope, and not above a budget an admin set on the same or a wider
// subject. The budget is then set by by's role.
func (s *Service) UpdateBudgetAs(ctx context.Context, by Actor, id int64, d Definition) (Budget, error) {
	cur, err := s.db.BudgetByID(ctx, id)
	if err != nil {
		return Budget{}, mapErr(err)
	}
	curB, err := budgetFromRow(cur)
	if err != nil {
		return Budget{}, err
	}
	setBy, err := s.permitBudget(ctx, by, curB.Subject, &curB)
	if err != nil {
		return Budget{}, err
	}
	actor := by.Name
	if d.Subject != "" && d.Subject != cur.Subject {
		return Budget{}, &FieldError{Field: "subject", Err: fmt.Errorf("cannot change (delete and create a budget instead)")}
	}
	d.Subject, d.Kind = cur.Subject, ""
	b, err := d.Build()
	if err != nil {
		return Budget{}, err
	}
	b.ID, b.SetBy = id, setBy
	if err := s.checkCeiling(ctx, by, b, 0); err != nil {
		return Budget{}, err
	}
	row, err := s.db.UpdateBudget(ctx, budgetToRow(b, ""), store.Audit{Actor: actor, Action: "budget.update", Details: auditDef(d)})
	if err != nil {
		return Budget{}, mapErr(err)
	}
	s.Invalidate()
	return budgetFromRow(row)
}

// Budget returns a live budget.
func (s *Service) Budget(ctx context.Context, id int64) (Budget, error) {
	row, err := s.db.BudgetByID(ctx, id)
	if err != nil {
		return Budget{}, mapErr(err)
	}
	return budgetFromRow(row)
}

// BudgetQuery selects live budgets for Budgets, in id order.
type BudgetQuery struct {
	Subject string // only this subject's budgets; "" for every budget
	// Search keeps budgets whose subject starts with it or whose name contains it
	// (case-insensitively); "" for all.
	Search string
	// Scope keeps only the budgets a manager administers (nil: every budget).
	Scope    Scope
	AfterID  int64 // only budgets with a greater id (0: from the first)
	BeforeID int64 // the page just before this id, instead (0: none)
	Limit    int   // at most this many; 0 for all
}

// Budgets lists live budgets in id order.
func (s *Service) Budgets(ctx context.Context, q BudgetQuery) ([]Budget, error) {
	var scope *store.ScopeFilter
	if q.Scope != nil {
		scope = q.Scope.filter()
	}
	rows, err := s.db.ListBudgets(ctx, store.BudgetPage{Subject: q.Subject, Search: q.Search, Scope: scope,
		AfterID: q.AfterID, BeforeID: q.BeforeID, Limit: q.Limit})
	if err != nil {
		return nil, mapErr(err)
	}
	return budgetsFromRows(rows)
}

func budgetsFromRows(rows []store.BudgetRow) ([]Budget, error) {
	out := make([]Budget, 0, len(rows))
	for _, r := range rows {
		b, err := budgetFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// DeleteBudget stops a budget from applying, as an admin; its history stays.
func (s *Service) DeleteBudget(ctx context.Context, actor string, id int64) error {
	return s.DeleteBudgetAs(ctx, AdminActor(actor), id)
}

// DeleteBudgetAs deletes a budget for by (a manager: only one a manager set, in its scope).
func (s *Service) DeleteBudgetAs(ctx context.Context, by Actor, id int64) error {
	if _, err := s.permitBudgetID(ctx, by, id); err != nil {
		return err
	}
	if err := s.db.DeleteBudget(ctx, id, store.Audit{Actor: by.Name, Action: "budget.delete"}); err != nil {
		return mapErr(err)
	}
	s.Invalidate()
	return nil
}

// ResetBudget starts a fresh window now, as an admin: spend so far stops counting against the
// limit. Holds already pending stay in the old window and settle there.
func (s *Service) ResetBudget(ctx context.Context, actor string, id int64, reason string) (time.Time, error) {
	return s.ResetBudgetAs(ctx, AdminActor(actor), id, reason)
}

// ResetBudgetAs resets a budget for by (a manager: only one a manager set, in its scope).
func (s *Service) ResetBudgetAs(ctx context.Context, by Actor, id int64, reason string) (time.Time, error) {
	if _, err := s.permitBudgetID(ctx, by, id); err != nil {
		return time.Time{}, err
	}
	at, err := s.db.ResetBudget(ctx, id, store.Audit{Actor: by.Name, Action: "budget.reset", Details: map[string]any{"reason": reason}})
	if err != nil {
		return time.Time{}, mapErr(err)
	}
	s.Invalidate()
	return at, nil
}

// Grant is a temporary increase of a budget's limit.
type Grant struct {
	ID        int64
	BudgetID  int64
	Amount    int64
	StartsAt  time.Time
	ExpiresAt time.Time
	Reason    string
	CreatedBy string
	CreatedAt time.Time
}

// AddGrant raises a budget's limit by amount until expiresAt, as an admin.
func (s *Service) AddGrant(ctx context.Context, actor string, budgetID, amount int64, expiresAt time.Time, reason string) (Grant, error) {
	return s.AddGrantAs(ctx, AdminActor(actor), budgetID, amount, expiresAt, reason)
}

// AddGrantAs adds a grant for by. A manager may grant only on a budget a manager set, in its
// scope, and the limit with every grant in force stays within the admin-set ceiling.
func (s *Service) AddGrantAs(ctx context.Context, by Actor, budgetID, amount int64, expiresAt time.Time, reason string) (Grant, error) {
	if amount <= 0 || amount > MaxLimit {
		return Grant{}, &FieldError{Field: "amount", Err: fmt.Errorf("must be positive")}
	}
	if !expiresAt.After(s.cfg.Now()) {
		return Grant{}, &FieldError{Field: "expires_at", Err: fmt.Errorf("must be in the future")}
	}
	b, err := s.permitBudgetID(ctx, by, budgetID)
	if err != nil {
		return Grant{}, err
	}
	if by.Role == RoleManager {
		gs, err := s.db.ActiveGrants(ctx, []int64{budgetID})
		if err != nil {
			return Grant{}, mapErr(err)
		}
		var granted int64
		for _, g := range gs {
			granted += g.Amount
		}
		if err := s.checkCeiling(ctx, by, b, granted+amount); err != nil {
			return Grant{}, err
		}
	}
	actor := by.Name
	g, err := s.db.CreateGrant(ctx, grantToRow(Grant{BudgetID: budgetID, Amount: amount, ExpiresAt: expiresAt, Reason: reason, CreatedBy: actor}),
		store.Audit{Actor: actor, Action: "budget.grant", Details: map[string]any{"amount": amount, "expires_at": expiresAt, "reason": reason}})
	if err != nil {
		return Grant{}, mapErr(err)
	}
	s.Invalidate()
	return grantFromRow(g), nil
}

// CreateTemplate stores a default-budget template for every new subject of d.Kind.
func (s *Service) CreateTemplate(ctx context.Context, actor string, d Definition) (Budget, error) {
	if d.Kind == "" {
		return Budget{}, &FieldError{Field: "subject_kind", Err: fmt.Errorf("is required")}
	}
	b, err := d.Build()
	if err != nil {
		return Budget{}, err
	}
	row, err := s.db.CreateTemplate(ctx, budgetToRow(b, d.Kind), store.Audit{Actor: actor, Action: "template.create", Details: auditDef(d)})
	if err != nil {
		return Budget{}, mapErr(err)
	}
	s.Invalidate()
	return budgetFromRow(row)
}

// UpdateTemplate changes a template; budgets already made from it keep their definition.
func (s *Service) UpdateTemplate(ctx context.Context, actor string, id int64, d Definition) (Budget, error) {
	if d.Kind == "" {
		return Budget{}, &FieldError{Field: "subject_kind", Err: fmt.Errorf("is required")}
	}
	b, err := d.Build()
	if err != nil {
		return Budget{}, err
	}
	b.ID = id
	row, err := s.db.UpdateTemplate(ctx, budgetToRow(b, d.Kind), store.Audit{Actor: actor, Action: "template.update", Details: auditDef(d)})
	if err != nil {
		return Budget{}, mapErr(err)
	}
	s.Invalidate()
	return budgetFromRow(row)
}

// DeleteTemplate stops a template from applying to new subjects.
func (s *Service) DeleteTemplate(ctx context.Context, actor string, id int64) error {
	if err := s.db.DeleteTemplate(ctx, id, store.Audit{Actor: actor, Action: "template.delete"}); err != nil {
		return mapErr(err)
	}
	s.Invalidate()
	return nil
}

// Template is a default-budget template: a Budget without a subject, plus the subject kind it
// attaches to.
type Template struct {
	Budget
	SubjectKind string
}

// Templates lists the live templates.
func (s *Service) Templates(ctx context.Context) ([]Template, error) {
	rows, err := s.db.ListTemplates(ctx)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Template, 0, len(rows))
	for _, r := range rows {
		b, err := budgetFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, Template{Budget: b, SubjectKind: r.SubjectKind})
	}
	return out, nil
}

// AuditEntry is one audit log entry.
type AuditEntry struct {
	ID      int64
	At      time.Time
	Actor   string
	Action  string
	Target  string
	Details json.RawMessage
}

// AuditLog lists audit entries newest first (target "" = all; before = id cursor, 0 = newest).
func (s *Service) AuditLog(ctx context.Context, target string, before int64, limit int) ([]AuditEntry, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	rows, err := s.db.AuditLog(ctx, target, before, limit)
	return convertAll(rows, auditFromRow), mapErr(err)
}

func auditDef(d Definition) map[string]any {
	m := map[string]any{"name": d.Name, "unit": d.Unit, "limit": d.Limit, "window": d.Window, "hard": d.Hard}
	if d.Subject != "" {
		m["subject"] = d.Subject
	}
	if d.Kind != "" {
		m["subject_kind"] = d.Kind
	}
	if d.TimeZone != "" {
		m["timezone"] = d.TimeZone
	}
	if d.AnchorDay != 0 {
		m["anchor_day"] = d.AnchorDay
	}
	if len(d.WarnAt) > 0 {
		m["warn_at"] = d.WarnAt
	}
	if len(d.Models) > 0 {
		m["models"] = d.Models
	}
	if len(d.Endpoints) > 0 {
		m["endpoints"] = d.Endpoints
	}
	if len(d.Route) > 0 {
		m["route"] = d.Route
	}
	return m
}
