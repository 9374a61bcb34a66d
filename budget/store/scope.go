package store

import "fmt"

// ScopeFilter keeps the rows a manager administers (budget.Scope, matched here in SQL): a
// subject is covered when it equals one of Exact or matches one of the LIKE patterns Like
// (already escaped); a key's subject key:<id> is covered when the key has owner subjects and
// every one is covered.
type ScopeFilter struct {
	Exact []string
	Like  []string
}

// scopeArgs returns the two arguments coveredSubject's placeholders read (NULLs: no filter).
func scopeArgs(f *ScopeFilter) []any {
	if f == nil {
		return []any{nil, nil}
	}
	return []any{f.Exact, f.Like}
}

// coveredOwner is the SQL test that the text expression x is covered by the scope in
// placeholders $n (exact) and $n+1 (LIKE patterns).
func coveredOwner(x string, n int) string {
	return fmt.Sprintf(`(%[1]s = ANY ($%[2]d::text[]) OR %[1]s LIKE ANY ($%[3]d::text[]))`, x, n, n+1)
}

// coveredKeyOwners is the SQL test that an owner array (a key's subjects) is non-empty and
// wholly covered.
func coveredKeyOwners(owners string, n int) string {
	return fmt.Sprintf(`(cardinality(%[1]s) > 0 AND NOT EXISTS (SELECT 1 FROM unnest(%[1]s) AS scope_o(s) WHERE NOT %[2]s))`,
		owners, coveredOwner("scope_o.s", n))
}

// coveredSubject is the SQL test that the subject expression x is covered, with the scope in
// placeholders $n and $n+1; true when the filter is nil (both NULL). x must be qualified.
func coveredSubject(x string, f *ScopeFilter, n int) string {
	if f == nil {
		return fmt.Sprintf(`($%d::text[] IS NULL AND $%d::text[] IS NULL)`, n, n+1)
	}
	return fmt.Sprintf(`(%s OR (starts_with(%[2]s, 'key:') AND EXISTS (SELECT 1 FROM api_keys scope_k
		WHERE scope_k.id = substr(%[2]s, 5) AND %[3]s)))`,
		coveredOwner(x, n), x, coveredKeyOwners("scope_k.subjects", n))
}

// coveredAny is the SQL test that one of the subjects of the array expression x is covered
// (a reservation is visible to a manager when it carried a subject the manager administers;
// a key's reservations carry its owners).
func coveredAny(x string, f *ScopeFilter, n int) string {
	if f == nil {
		return fmt.Sprintf(`($%d::text[] IS NULL AND $%d::text[] IS NULL)`, n, n+1)
	}
	return fmt.Sprintf(`EXISTS (SELECT 1 FROM unnest(%s) AS scope_r(s) WHERE %s)`, x, coveredOwner("scope_r.s", n))
}
