package budget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/purser-dev/purser/budget/store"
)

// TemplateLimits bound default-budget templates: each new subject of a template's kind costs
// a budget row and window rows, and subjects can come from request headers a trusted component
// copies (x-tenant), so a flood of made-up values must not make unbounded budgets. The zero
// value means the defaults.
type TemplateLimits struct {
	// MaxBudgets caps the live budgets each template makes (default 50,000; negative: no
	// cap). A new subject past the cap is refused (ErrSubjectLimit), never admitted without
	// the budget the template would have given it.
	MaxBudgets int64
	// Rate bounds how many budgets templates make per second for new subjects of one kind, on
	// each replica (default 20, burst 10x). Past it a new subject is refused with a retry.
	Rate float64
	// Burst is the rate limiter's burst (default 10 x Rate).
	Burst int
}

// Template defaults.
const (
	DefaultTemplateMaxBudgets = 50_000
	DefaultTemplateRate       = 20
)

func (l TemplateLimits) withDefaults() TemplateLimits {
	if l.MaxBudgets == 0 {
		l.MaxBudgets = DefaultTemplateMaxBudgets
	}
	if l.Rate <= 0 {
		l.Rate = DefaultTemplateRate
	}
	if l.Burst <= 0 {
		l.Burst = int(10 * l.Rate)
	}
	return l
}

// ErrSubjectLimit: a new subject would need a budget from a template that cannot make one now
// (its cap is reached, or new subjects of its kind arrive faster than its rate).
var ErrSubjectLimit = errors.New("new subject refused by its budget template's limits")

// SubjectLimit says why a new subject was refused. It wraps ErrSubjectLimit.
type SubjectLimit struct {
	Subject  Subject
	Template string // the template's name
	// Retry: the template's rate was exceeded (a retry soon may pass); otherwise its cap.
	Retry bool
	Max   int64 // the cap, when Retry is false
}

func (e *SubjectLimit) Error() string {
	if e.Retry {
		return fmt.Sprintf("budget template %q makes budgets for new %s subjects at a limited rate; retry shortly", e.Template, e.Subject.Kind())
	}
	return fmt.Sprintf("budget template %q has made its maximum of %d budgets; an operator must raise the limit or prune", e.Template, e.Max)
}

func (e *SubjectLimit) Unwrap() error { return ErrSubjectLimit }

// templateGate rate-limits materialisation per subject kind.
type templateGate struct {
	limits  TemplateLimits
	mu      sync.Mutex
	perKind map[string]*rate.Limiter
	// live caches the live templates; nil after Invalidate.
	live atomic.Pointer[[]store.TemplateRef]
}

func newTemplateGate(l TemplateLimits) templateGate {
	return templateGate{limits: l.withDefaults(), perKind: map[string]*rate.Limiter{}}
}

// allow takes one token of kind's rate.
func (g *templateGate) allow(kind string) bool {
	g.mu.Lock()
	l, ok := g.perKind[kind]
	if !ok {
		if len(g.perKind) >= maxGateKinds {
			clear(g.perKind) // kinds come from templates: never many; bound the map anyway
		}
		l = rate.NewLimiter(rate.Limit(g.limits.Rate), g.limits.Burst)
		g.perKind[kind] = l
	}
	g.mu.Unlock()
	return l.Allow()
}

const maxGateKinds = 1024

// liveTemplates returns the live templates, from the cache when it is current.
func (s *Service) liveTemplates(ctx context.Context) ([]store.TemplateRef, error) {
	if p := s.templates.live.Load(); p != nil {
		return *p, nil
	}
	gen := s.cacheGen.Load()
	ts, err := s.db.LiveTemplates(ctx)
	if err != nil {
		return nil, mapErr(err)
	}
	if s.cacheGen.Load() == gen {
		s.templates.live.Store(&ts)
	}
	return ts, nil
}

// budgetsFor returns the live budgets of each subject, from the cache or, for the misses, from
// one database round trip; a subject of a kind some template covers gets that template's
// budget first, within the templates' limits. A subject refused by those limits is in refused
// (not cached: it may be admitted later) and has no budgets in the map.
func (s *Service) budgetsFor(ctx context.Context, subjects []Subject) (map[Subject][]*Budget, map[Subject]error, error) {
	out := make(map[Subject][]*Budget, len(subjects))
	var miss []string
	for _, sub := range subjects {
		if _, done := out[sub]; done {
			continue
		}
		if bs, ok := s.budgets.Get(sub); ok {
			out[sub] = bs
			continue
		}
		out[sub] = nil
		miss = append(miss, string(sub))
	}
	if len(miss) == 0 {
		return out, nil, nil
	}
	gen := s.cacheGen.Load()
	tmpls, err := s.liveTemplates(ctx)
	if err != nil {
		return nil, nil, err
	}
	var tids []int64
	for _, t := range tmpls {
		for _, m := range miss {
			if Subject(m).Kind() == t.SubjectKind {
				tids = append(tids, t.ID)
				break
			}
		}
	}
	rows, made, err := s.db.LoadBudgets(ctx, miss, tids)
	if err != nil {
		return nil, nil, mapErr(err)
	}
	var refused map[Subject]error
	if need := missingTemplates(miss, tmpls, rows, made); len(need) > 0 {
		if refused, err = s.materialise(ctx, need); err != nil {
			return nil, nil, err
		}
		// Read them again: the new budgets, and those another replica made meanwhile.
		if rows, _, err = s.db.LoadBudgets(ctx, miss, nil); err != nil {
			return nil, nil, mapErr(err)
		}
	}
	loaded := make(map[Subject][]*Budget, len(miss))
	for _, r := range rows {
		b, err := budgetFromRow(r)
		if err != nil {
			return nil, nil, err
		}
		loaded[b.Subject] = append(loaded[b.Subject], &b)
	}
	cache := s.cacheGen.Load() == gen
	for _, m := range miss {
		sub := Subject(m)
		if refused[sub] != nil {
			delete(out, sub)
			continue
		}
		out[sub] = loaded[sub]
		if cache {
			s.budgets.Add(sub, loaded[sub])
		}
	}
	return out, refused, nil
}

// templateNeed is a budget a template should make for a subject.
type templateNeed struct {
	store.TemplateSubject
	tmpl store.TemplateRef
}

// missingTemplates lists, per missed subject, the templates of its kind that made no budget
// for it yet (and whose name it does not already have a live budget under).
func missingTemplates(miss []string, tmpls []store.TemplateRef, rows []store.BudgetRow, made []store.TemplateSubject) []templateNeed {
	if len(tmpls) == 0 {
		return nil
	}
	type pair struct {
		t int64
		s string
	}
	have := make(map[pair]bool, len(made))
	for _, m := range made {
		have[pair{m.TemplateID, m.Subject}] = true
	}
	named := make(map[pair]bool, len(rows))
	for _, r := range rows {
		named[pair{0, r.Subject + "\x00" + r.Name}] = true
	}
	var need []templateNeed
	for _, m := range miss {
		kind := Subject(m).Kind()
		for _, t := range tmpls {
			if t.SubjectKind != kind || have[pair{t.ID, m}] || named[pair{0, m + "\x00" + t.Name}] {
				continue
			}
			need = append(need, templateNeed{TemplateSubject: store.TemplateSubject{TemplateID: t.ID, Subject: m}, tmpl: t})
		}
	}
	return need
}

// materialise makes the budgets templates owe new subjects, within the rate of each kind and
// each template's cap; it returns the subjects it had to refuse.
func (s *Service) materialise(ctx context.Context, need []templateNeed) (map[Subject]error, error) {
	refused := map[Subject]error{}
	var pairs []store.TemplateSubject
	asked := map[Subject]bool{}
	for _, n := range need {
		sub := Subject(n.Subject)
		if refused[sub] != nil {
			continue
		}
		// One token per new subject, however many templates its kind has.
		if !asked[sub] {
			asked[sub] = true
			if !s.templates.allow(n.tmpl.SubjectKind) {
				refused[sub] = &SubjectLimit{Subject: sub, Template: n.tmpl.Name, Retry: true}
				s.cfg.Metrics.materialised(ctx, "rate_limited", 1)
				continue
			}
		}
		pairs = append(pairs, n.TemplateSubject)
	}
	if len(pairs) == 0 {
		return refused, nil
	}
	made, err := s.db.MaterialiseBudgets(ctx, pairs, s.templates.limits.MaxBudgets)
	if err != nil {
		return nil, mapErr(err)
	}
	s.cfg.Metrics.materialised(ctx, "made", int64(len(made)))
	got := make(map[store.TemplateSubject]bool, len(made))
	for _, m := range made {
		got[m] = true
	}
	var unmade []store.TemplateSubject
	for _, p := range pairs {
		if !got[p] {
			unmade = append(unmade, p)
		}
	}
	if len(unmade) == 0 {
		return refused, nil
	}
	// Not made: another replica made it meanwhile (fine), or the template is at its cap.
	var subs []string
	var tids []int64
	for _, p := range unmade {
		subs, tids = append(subs, p.Subject), append(tids, p.TemplateID)
	}
	rows, have, err := s.db.LoadBudgets(ctx, subs, tids)
	if err != nil {
		return nil, mapErr(err)
	}
	tmpls := map[int64]store.TemplateRef{}
	for _, n := range need {
		tmpls[n.TemplateID] = n.tmpl
	}
	var still []templateNeed
	for _, p := range unmade {
		still = append(still, templateNeed{TemplateSubject: p, tmpl: tmpls[p.TemplateID]})
	}
	for _, n := range missingTemplates(subs, mapValues(tmpls), rows, have) {
		if !containsNeed(still, n.TemplateSubject) {
			continue
		}
		sub := Subject(n.Subject)
		if refused[sub] == nil {
			refused[sub] = &SubjectLimit{Subject: sub, Template: n.tmpl.Name, Max: s.templates.limits.MaxBudgets}
			s.cfg.Metrics.materialised(ctx, "capped", 1)
		}
	}
	return refused, nil
}

func containsNeed(ns []templateNeed, p store.TemplateSubject) bool {
	for _, n := range ns {
		if n.TemplateSubject == p {
			return true
		}
	}
	return false
}

func mapValues(m map[int64]store.TemplateRef) []store.TemplateRef {
	out := make([]store.TemplateRef, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// PruneIdleBudgets soft-deletes up to batch budgets made by templates that have been idle for
// idle (see store.PruneIdleBudgets): the live set stays bounded by the subjects that actually
// spend, and a subject that comes back gets a fresh budget from its template, with exactly the
// room the pruned one had. Spend history and `purser verify` are unchanged.
func (s *Service) PruneIdleBudgets(ctx context.Context, idle time.Duration, batch int) (int64, error) {
	if idle < MinIdleBudget {
		return 0, fmt.Errorf("%w: idle budget age %s: want at least %s", ErrInvalid, idle, MinIdleBudget)
	}
	var total int64
	for {
		n, err := s.db.PruneIdleBudgets(ctx, idle, batch)
		if err != nil {
			return total, mapErr(err)
		}
		total += n
		if n < int64(batch) {
			break
		}
	}
	if total > 0 {
		s.Invalidate()
		s.cfg.Metrics.materialised(ctx, "pruned", total)
	}
	return total, nil
}

// MinIdleBudget is the shortest idle age PruneIdleBudgets accepts.
const MinIdleBudget = time.Hour

// RunIdleBudgetPruner prunes idle template budgets every interval until ctx ends.
func (s *Service) RunIdleBudgetPruner(ctx context.Context, idle, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := s.PruneIdleBudgets(ctx, idle, 1000)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.LogAttrs(ctx, slog.LevelWarn, "prune idle template budgets", slog.String("error", err.Error()))
		case n > 0:
			s.log.LogAttrs(ctx, slog.LevelInfo, "pruned idle template budgets", slog.Int64("count", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
