// Package budget is purser's domain: subjects, API keys, budgets and their windows, and the
// Service that reserves, settles, voids and expires spend against them.
//
// Invariants the package keeps (tests prove them against a real Postgres):
//  1. Admission: for every hard budget window, posted + pending + amount <= limit when a hold is
//     added; all budgets a request touches are held together or not at all.
//  2. Per window, pending = sum of pending holds and posted = sum of settled actuals plus expired
//     charges (Verify checks it).
//  3. Settle, Void and Expire are idempotent; a late settlement of an expired reservation
//     refunds the difference.
//
// Money is int64 micro-units of USD, tokens are whole tokens; there are no floats in any
// amount.
package budget

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Subject names who or what a budget is about, written kind:id (or just "global").
type Subject string

// Subject kinds.
const (
	KindKey       = "key"
	KindUser      = "user"
	KindTeam      = "team"
	KindOrg       = "org"
	KindWorkload  = "workload"
	KindNamespace = "namespace"
	KindTag       = "tag"
	KindRoute     = "route"
	KindGlobal    = "global"
)

// Global is the subject every request carries: a budget on it caps the whole installation.
const Global Subject = KindGlobal

// MaxSubjectLen bounds a subject's length in bytes.
const MaxSubjectLen = 512

var subjectKinds = map[string]bool{
	KindKey: true, KindUser: true, KindTeam: true, KindOrg: true, KindWorkload: true,
	KindNamespace: true, KindTag: true, KindRoute: true,
}

// ParseSubject validates s and returns it as a Subject. The id part is any printable text
// without whitespace or control characters; workload ids must be SPIFFE ids.
func ParseSubject(s string) (Subject, error) {
	if s == "" {
		return "", fmt.Errorf("subject is empty")
	}
	if s == KindGlobal {
		return Global, nil
	}
	if len(s) > MaxSubjectLen {
		return "", fmt.Errorf("subject is longer than %d bytes", MaxSubjectLen)
	}
	kind, id, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("subject %q: want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global", s)
	}
	if !subjectKinds[kind] {
		return "", fmt.Errorf("subject %q: unknown kind %q (kinds: key, user, team, org, workload, namespace, tag, route, global)", s, kind)
	}
	if id == "" {
		return "", fmt.Errorf("subject %q: empty id", s)
	}
	if !utf8.ValidString(id) {
		return "", fmt.Errorf("subject %q: id is not valid UTF-8", s)
	}
	for _, r := range id {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return "", fmt.Errorf("subject %q: id contains whitespace or control characters", s)
		}
	}
	if kind == KindWorkload && !strings.HasPrefix(id, "spiffe://") {
		return "", fmt.Errorf("subject %q: workload id must be a SPIFFE id (spiffe://...)", s)
	}
	return Subject(s), nil
}

// Kind returns the part before the colon ("global" for Global).
func (s Subject) Kind() string {
	kind, _, _ := strings.Cut(string(s), ":")
	return kind
}

// ID returns the part after the colon ("" for Global).
func (s Subject) ID() string {
	_, id, _ := strings.Cut(string(s), ":")
	return id
}

// KeySubject is the subject of an API key id.
func KeySubject(keyID string) Subject { return Subject(KindKey + ":" + keyID) }

// ParseSubjects validates a list and removes duplicates, keeping the first occurrence.
func ParseSubjects(ss []string) ([]Subject, error) {
	out := make([]Subject, 0, len(ss))
	seen := make(map[Subject]bool, len(ss))
	for i, s := range ss {
		sub, err := ParseSubject(s)
		if err != nil {
			return nil, fmt.Errorf("subjects[%d]: %w", i, err)
		}
		if !seen[sub] {
			seen[sub] = true
			out = append(out, sub)
		}
	}
	return out, nil
}
