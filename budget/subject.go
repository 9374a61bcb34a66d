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

const kindList = "key, user, team, org, workload, namespace, tag, route"

// ParseSubject is purser's one subject validator: the admin API, `purser apply`, API-key
// owners and every request-side source (trusted headers, JWT claims, route context, SPIFFE
// principals) accept exactly the subjects it accepts. The rules:
//
//   - "global", or kind:id with kind one of key, user, team, org, workload, namespace, tag,
//     route;
//   - at most MaxSubjectLen bytes in all;
//   - id: one or more characters of valid UTF-8, each printable (Unicode letters, marks,
//     numbers, punctuation and symbols: no white space of any kind, no control characters,
//     no format characters such as the bidi override U+202E or zero-width joiners, no private
//     use or unassigned code points) and none a ',' (subjects travel joined with commas in
//     Envoy metadata);
//   - a workload id is a SPIFFE id (spiffe://...).
//
// A subject that breaks a rule is rejected, never repaired or truncated.
func ParseSubject(s string) (Subject, error) {
	if s == "" {
		return "", fmt.Errorf("subject is empty")
	}
	if s == KindGlobal {
		return Global, nil
	}
	if len(s) > MaxSubjectLen {
		return "", fmt.Errorf("subject %q...: longer than %d bytes", truncateValid(s, 40), MaxSubjectLen)
	}
	kind, id, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("subject %q: want kind:id (kinds: %s) or global", s, kindList)
	}
	if err := CheckKind(kind); err != nil {
		return "", fmt.Errorf("subject %q: %w", s, err)
	}
	if id == "" {
		return "", fmt.Errorf("subject %q: empty id", s)
	}
	for i := 0; i < len(id); {
		r, size := utf8.DecodeRuneInString(id[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return "", fmt.Errorf("subject %q: id is not valid UTF-8", s)
		case r == ',':
			return "", fmt.Errorf("subject %q: id contains ','", s)
		case unicode.IsSpace(r):
			return "", fmt.Errorf("subject %q: id contains whitespace (%U)", s, r)
		case unicode.IsControl(r):
			return "", fmt.Errorf("subject %q: id contains a control character (%U)", s, r)
		case unicode.Is(unicode.Cf, r):
			return "", fmt.Errorf("subject %q: id contains a format character (%U)", s, r)
		case !unicode.IsPrint(r):
			return "", fmt.Errorf("subject %q: id contains %U, which is not a printable character", s, r)
		}
		i += size
	}
	if kind == KindWorkload && !strings.HasPrefix(id, "spiffe://") {
		return "", fmt.Errorf("subject %q: workload id must be a SPIFFE id (spiffe://...)", s)
	}
	return Subject(s), nil
}

// CheckKind reports whether kind can start a kind:id subject (configuration that maps claims
// or headers to subjects names a kind).
func CheckKind(kind string) error {
	if !subjectKinds[kind] {
		return fmt.Errorf("unknown kind %q (kinds: %s, or the subject global)", kind, kindList)
	}
	return nil
}

// truncateValid returns at most n bytes of s, cut at a character boundary.
func truncateValid(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
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
