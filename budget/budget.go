package budget

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget/pricing"
)

// Unit is what a budget counts.
type Unit string

// Units. Money is micro-units of USD: the price catalog is in USD, and converting currencies
// is out of scope, so other currencies are rejected rather than silently treated as USD.
// Requests counts admitted requests: each holds 1, settles at 1 whatever its usage, is
// released when voided (the upstream was never reached) and charged when it expires, so a
// requests budget with a minute window is an exact requests-per-minute limit.
const (
	USD      Unit = "usd"
	Tokens   Unit = "tokens"
	Requests Unit = "requests"
)

// ParseUnit reads a unit name, case-insensitively ("" is usd).
func ParseUnit(s string) (Unit, error) {
	switch u := Unit(strings.ToLower(s)); u {
	case USD, "":
		return USD, nil
	case Tokens, Requests:
		return u, nil
	}
	return "", fmt.Errorf("must be usd, tokens or requests, got %q", s)
}

// Format writes an amount of u as purser's APIs do: USD with six decimals ("12.500000"),
// tokens and requests as whole numbers.
func (u Unit) Format(v int64) string {
	if u == Tokens || u == Requests {
		return strconv.FormatInt(v, 10)
	}
	return pricing.FormatMicros(v)
}

// MaxLimit bounds a limit so sums of holds cannot overflow int64.
const MaxLimit = int64(1) << 52

// Budget is a limit on one subject over a window, optionally narrowed by filters.
type Budget struct {
	ID      int64
	Name    string
	Subject Subject
	Unit    Unit
	Limit   int64 // micro-USD or tokens
	Window  WindowSpec
	Hard    bool  // hard budgets deny; soft ones only warn
	WarnAt  []int // percentages of the limit that raise warnings, ascending
	// Models limits the budget to requests whose model matches one of these globs.
	Models []Glob
	// Endpoints limits the budget to requests whose path matches one of these globs.
	Endpoints []Glob
	// RouteMatch limits the budget to requests whose route context has these key/values.
	RouteMatch map[string]string
	// ResetAt is the instant of the last manual reset (zero if none).
	ResetAt    time.Time
	TemplateID int64 // 0 unless made from a default-budget template
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// SetBy is the role that last created or changed the budget: RoleAdmin or RoleManager.
	SetBy Role
}

// Definition is the user-editable part of a budget or template, as strings from an API or a
// file, before validation.
type Definition struct {
	Name      string
	Subject   string // budgets
	Kind      string // templates: the subject kind they attach to
	Unit      string
	Limit     int64
	Window    string // minute|hour|day|week|month|quarter|year|lifetime|<Go duration, e.g. 72h>
	TimeZone  string
	AnchorDay int
	Hard      bool
	WarnAt    []int
	Models    []string
	Endpoints []string
	Route     map[string]string
}

// ParseWindow parses a window name or rolling duration. An error about the time zone or the
// anchor day is a *FieldError naming that field.
func ParseWindow(s, tz string, anchor int) (WindowSpec, error) {
	spec := WindowSpec{Kind: WindowKind(s), AnchorDay: anchor}
	switch spec.Kind {
	case Minute, Hour, Day, Week, Month, Quarter, Year, Lifetime:
	default:
		d, err := time.ParseDuration(s)
		if err != nil {
			return WindowSpec{}, fmt.Errorf("window %q: want minute, hour, day, week, month, quarter, year, lifetime or a duration such as 72h", s)
		}
		spec = WindowSpec{Kind: Rolling, Rolling: d, AnchorDay: anchor}
	}
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return WindowSpec{}, fieldErr("timezone", "%q is not a known IANA time zone", tz)
	}
	spec.Location = loc
	if err := spec.Validate(); err != nil {
		return WindowSpec{}, err
	}
	return spec, nil
}

// FieldError names the invalid field of a definition.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Build validates a definition and returns the budget it describes (ID and timestamps unset).
// For templates (d.Kind set) Subject stays empty.
func (d Definition) Build() (Budget, error) {
	var b Budget
	b.Name = strings.TrimSpace(d.Name)
	if b.Name == "" {
		return Budget{}, fieldErr("name", "is required")
	}
	if len(b.Name) > 200 {
		return Budget{}, fieldErr("name", "is longer than 200 bytes")
	}
	if d.Kind != "" {
		if d.Kind != KindGlobal && CheckKind(d.Kind) != nil {
			return Budget{}, fieldErr("subject_kind", "unknown kind %q", d.Kind)
		}
	} else {
		s, err := ParseSubject(d.Subject)
		if err != nil {
			return Budget{}, &FieldError{Field: "subject", Err: err}
		}
		b.Subject = s
	}
	u, err := ParseUnit(d.Unit)
	if err != nil {
		return Budget{}, fieldErr("unit", "%s", err)
	}
	b.Unit = u
	if d.Limit < 0 {
		return Budget{}, fieldErr("limit", "must not be negative")
	}
	if d.Limit > MaxLimit {
		return Budget{}, fieldErr("limit", "is too large")
	}
	b.Limit = d.Limit
	if d.Window == "" {
		return Budget{}, fieldErr("window", "is required")
	}
	w, err := ParseWindow(d.Window, d.TimeZone, d.AnchorDay)
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) { // timezone, anchor_day
			return Budget{}, fe
		}
		return Budget{}, &FieldError{Field: "window", Err: err}
	}
	b.Window = w
	b.Hard = d.Hard
	warn := slices.Clone(d.WarnAt)
	sort.Ints(warn)
	for i, p := range warn {
		if p <= 0 || p > 1000 {
			return Budget{}, fieldErr("warn_at", "%d is not a percentage in 1..1000", p)
		}
		if i > 0 && warn[i-1] == p {
			return Budget{}, fieldErr("warn_at", "%d appears twice", p)
		}
	}
	b.WarnAt = warn
	for i, m := range d.Models {
		g, err := ParseGlob(m)
		if err != nil {
			return Budget{}, &FieldError{Field: fmt.Sprintf("models[%d]", i), Err: err}
		}
		b.Models = append(b.Models, g)
	}
	for i, e := range d.Endpoints {
		if !strings.HasPrefix(e, "/") && !strings.HasPrefix(e, "*") {
			return Budget{}, fieldErr(fmt.Sprintf("endpoints[%d]", i), "must start with / or *, got %q", e)
		}
		g, err := ParseGlob(e)
		if err != nil {
			return Budget{}, &FieldError{Field: fmt.Sprintf("endpoints[%d]", i), Err: err}
		}
		b.Endpoints = append(b.Endpoints, g)
	}
	for k, v := range d.Route {
		if k == "" || v == "" {
			return Budget{}, fieldErr("route", "keys and values must be non-empty")
		}
	}
	if len(d.Route) > 0 {
		b.RouteMatch = d.Route
	}
	return b, nil
}

// Definition returns the budget's editable part (the inverse of Build).
func (b Budget) Definition() Definition {
	d := Definition{
		Name:      b.Name,
		Subject:   string(b.Subject),
		Unit:      string(b.Unit),
		Limit:     b.Limit,
		Window:    b.WindowString(),
		AnchorDay: b.Window.AnchorDay,
		Hard:      b.Hard,
		WarnAt:    slices.Clone(b.WarnAt),
		Route:     b.RouteMatch,
	}
	if b.Window.Location != nil {
		d.TimeZone = b.Window.Location.String()
	}
	for _, m := range b.Models {
		d.Models = append(d.Models, string(m))
	}
	for _, e := range b.Endpoints {
		d.Endpoints = append(d.Endpoints, string(e))
	}
	return d
}

// WindowString is the window as written in a definition.
func (b Budget) WindowString() string {
	if b.Window.Kind == Rolling {
		return b.Window.Rolling.String()
	}
	return string(b.Window.Kind)
}

// Target is what a budget's filters look at.
type Target struct {
	Model string
	Path  string
	Route map[string]string
}

// Applies reports whether the budget's filters select the target (no filter selects all).
func (b *Budget) Applies(t Target) bool {
	if len(b.Models) > 0 && !anyMatch(b.Models, t.Model) {
		return false
	}
	if len(b.Endpoints) > 0 && !anyMatch(b.Endpoints, t.Path) {
		return false
	}
	for k, v := range b.RouteMatch {
		if t.Route[k] != v {
			return false
		}
	}
	return true
}

func anyMatch(gs []Glob, s string) bool {
	for _, g := range gs {
		if g.Match(s) {
			return true
		}
	}
	return false
}
