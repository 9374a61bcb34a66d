package budget

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Role is what an admin credential may do.
//
//   - admin: everything.
//   - manager: read and change keys and budgets only within its Scope (see Scope), never a
//     budget an admin set, and never above a budget an admin set on the same or a wider
//     subject (see Wider and Service.CreateBudgetAs).
//   - viewer: read everything, change nothing.
type Role string

// Roles.
const (
	RoleAdmin   Role = "admin"
	RoleManager Role = "manager"
	RoleViewer  Role = "viewer"
)

// ParseRole reads a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleAdmin, RoleManager, RoleViewer:
		return r, nil
	}
	return "", fmt.Errorf("must be admin, manager or viewer, got %q", s)
}

// Actor is who makes a change: the name the audit log records, the role and, for a manager,
// the subjects it administers.
type Actor struct {
	Name  string
	Role  Role
	Scope Scope
}

// AdminActor is an actor with every right (the bootstrap token, the seed command).
func AdminActor(name string) Actor { return Actor{Name: name, Role: RoleAdmin} }

// Scope is the set of subjects a manager administers. Each entry is either
//
//   - a subject, which covers itself and the subjects below it: ids of the same kind that
//     continue it after a '/' ("team:ml" covers team:ml and team:ml/nlp, not team:mlops), or
//   - a prefix ending in '*', which covers every subject that starts with the text before the
//     '*' ("user:*" covers every user, "team:ml-*" covers team:ml-infra and team:ml-web).
//
// A key's own subject, key:<id>, is covered when the key has at least one owner subject and
// every one of them is covered: a manager administers the keys of its team, not a key that
// also bills another team. Entries never name key: subjects or "global" (a global manager is
// an admin).
type Scope []string

// MaxScopeEntries bounds a manager's scope.
const MaxScopeEntries = 100

// ParseScope validates scope entries, removing duplicates.
func ParseScope(entries []string) (Scope, error) {
	if len(entries) > MaxScopeEntries {
		return nil, fmt.Errorf("at most %d entries", MaxScopeEntries)
	}
	out := make(Scope, 0, len(entries))
	for i, e := range entries {
		if err := checkScopeEntry(e); err != nil {
			return nil, fmt.Errorf("[%d] %q: %w", i, e, err)
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out, nil
}

func checkScopeEntry(e string) error {
	if prefix, ok := strings.CutSuffix(e, "*"); ok {
		kind, rest, found := strings.Cut(prefix, ":")
		if !found {
			return fmt.Errorf("a prefix must start with a kind, such as user:* or team:ml-*")
		}
		if !subjectKinds[kind] || kind == KindKey {
			return fmt.Errorf("unknown or unsupported kind %q (keys are covered through their owners)", kind)
		}
		if strings.Contains(rest, "*") {
			return fmt.Errorf("'*' may only end an entry")
		}
		if rest != "" {
			if _, err := ParseSubject(kind + ":" + rest); err != nil {
				return err
			}
		}
		return nil
	}
	s, err := ParseSubject(e)
	if err != nil {
		return err
	}
	if s == Global || s.Kind() == KindKey {
		return fmt.Errorf("a scope names owner subjects (team:ml, user:*), not global or key: subjects")
	}
	return nil
}

// coversOwner reports whether a subject other than a key's own is covered.
func (sc Scope) coversOwner(s Subject) bool {
	for _, e := range sc {
		if prefix, ok := strings.CutSuffix(e, "*"); ok {
			if strings.HasPrefix(string(s), prefix) {
				return true
			}
			continue
		}
		if string(s) == e || strings.HasPrefix(string(s), e+"/") {
			return true
		}
	}
	return false
}

// Covers reports whether the scope covers subject s. owners are the owner subjects of the key
// when s is a key: subject (nil for an unknown key); they are ignored otherwise.
func (sc Scope) Covers(s Subject, owners []Subject) bool {
	if s.Kind() == KindKey {
		if len(owners) == 0 {
			return false
		}
		for _, o := range owners {
			if !sc.coversOwner(o) {
				return false
			}
		}
		return true
	}
	return sc.coversOwner(s)
}

// CoversKey reports whether the scope covers a key (its owners).
func (sc Scope) CoversKey(k Key) bool { return sc.Covers(KeySubject(k.ID), k.Subjects) }

// filter is the scope as the store matches it in SQL (the same rule as Covers).
func (sc Scope) filter() *store.ScopeFilter {
	f := &store.ScopeFilter{Exact: []string{}, Like: []string{}}
	for _, e := range sc {
		if prefix, ok := strings.CutSuffix(e, "*"); ok {
			f.Like = append(f.Like, likeEscape(prefix)+"%")
			continue
		}
		f.Exact = append(f.Exact, e)
		f.Like = append(f.Like, likeEscape(e)+"/%")
	}
	return f
}

// likeEscape escapes LIKE's wildcards (and its escape character, backslash).
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// Wider reports whether w is a wider subject than s: a budget on w caps what s may spend.
// w is wider than s (w != s) when
//
//   - w is global; or
//   - w and s have the same kind and s's id continues w's after a '/' (team:ml is wider than
//     team:ml/nlp); or
//   - s is key:<id> and w is one of that key's owners (owners), or wider than one of them.
func Wider(w, s Subject, owners []Subject) bool {
	if w == s {
		return false
	}
	if w == Global {
		return true
	}
	if w.Kind() == s.Kind() && strings.HasPrefix(string(s), string(w)+"/") {
		return true
	}
	if s.Kind() == KindKey {
		for _, o := range owners {
			if o == w || Wider(w, o, nil) {
				return true
			}
		}
	}
	return false
}

// widerSubjects lists every subject wider than s (see Wider), s's own ancestors first.
func widerSubjects(s Subject, owners []Subject) []Subject {
	var out []Subject
	add := func(x Subject) {
		if x != s && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	ancestors := func(x Subject) {
		id := x.ID()
		for i := strings.LastIndexByte(id, '/'); i > 0; i = strings.LastIndexByte(id, '/') {
			id = id[:i]
			add(Subject(x.Kind() + ":" + id))
		}
	}
	ancestors(s)
	if s.Kind() == KindKey {
		for _, o := range owners {
			add(o)
			ancestors(o)
		}
	}
	add(Global)
	return out
}

// nominalLength is a window's length for comparing budgets: calendar windows at their
// longest (a month is 31 days), lifetime longer than any.
func nominalLength(w WindowSpec) time.Duration {
	const day = 24 * time.Hour
	switch w.Kind {
	case Minute:
		return time.Minute
	case Hour:
		return time.Hour
	case Day:
		return day
	case Week:
		return 7 * day
	case Month:
		return 31 * day
	case Quarter:
		return 92 * day
	case Year:
		return 366 * day
	case Rolling:
		return w.Rolling
	}
	return 1<<63 - 1
}
