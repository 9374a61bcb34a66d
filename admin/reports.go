package admin

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/purser-dev/purser/budget"
)

// maxSpendRows bounds a spend report (the "limit" parameter).
const maxSpendRows = 10_000

func (s *API) status(r *http.Request, c caller) (int, any, error) {
	raw := r.URL.Query()["subject"]
	if len(raw) == 0 {
		return 0, nil, invalid("subject", "is required (e.g. ?subject=team:ml; repeat it for several)")
	}
	subjects, err := budget.ParseSubjects(raw)
	if err != nil {
		return 0, nil, invalid("subject", "%s", err)
	}
	for _, sub := range subjects {
		if err := s.visibleSubject(r.Context(), c, sub); err != nil {
			return 0, nil, err
		}
	}
	sts, err := s.svc.Status(r.Context(), subjects...)
	if err != nil {
		return 0, nil, err
	}
	usage, err := s.usageHealth(r)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"subjects": raw, "budgets": statuses(sts), "usage": usage}, nil
}

// UsageWatch is the missing-usage watchdog's summary of the last hour, deployment-wide: how
// many resolved requests were charged their whole hold because no usage came back, and the
// worst (route, provider, model) groups.
type UsageWatch struct {
	Since        time.Time    `json:"since"`
	Resolved     int64        `json:"resolved"`
	WithoutUsage int64        `json:"without_usage"` // settled at the hold: the answer had no readable usage
	Expired      int64        `json:"expired"`       // no access-log entry arrived
	Worst        []UsageGroup `json:"worst"`         // at most 5, most missing first; groups with none left out
}

// UsageGroup is one (route, provider, model) of UsageWatch.
type UsageGroup struct {
	Route        string `json:"route"`
	Provider     string `json:"provider"`
	Model        string `json:"model"`
	Resolved     int64  `json:"resolved"`
	WithoutUsage int64  `json:"without_usage"`
	Compressed   int64  `json:"compressed"`
	Streams      int64  `json:"streams"`
	Expired      int64  `json:"expired"`
}

func (s *API) usageHealth(r *http.Request) (UsageWatch, error) {
	since := s.cfg.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	rows, err := s.svc.UsageHealth(r.Context(), since)
	if err != nil {
		return UsageWatch{}, err
	}
	w := UsageWatch{Since: since, Worst: []UsageGroup{}}
	for _, g := range rows {
		w.Resolved += g.Resolved
		w.WithoutUsage += g.WithoutUsage
		w.Expired += g.Expired
		if g.WithoutUsage+g.Expired > 0 {
			w.Worst = append(w.Worst, UsageGroup(g))
		}
	}
	slices.SortStableFunc(w.Worst, func(a, b UsageGroup) int {
		return cmp.Compare(b.WithoutUsage+b.Expired, a.WithoutUsage+a.Expired)
	})
	w.Worst = w.Worst[:min(len(w.Worst), 5)]
	return w, nil
}

func statuses(sts []budget.Status) []Budget {
	out := make([]Budget, 0, len(sts))
	for _, st := range sts {
		b := toBudget(st.Budget)
		b.Current = toWindow(st)
		out = append(out, b)
	}
	return out
}

// me shows a key holder their key (never its secret) and the budgets of its own subjects.
func (s *API) me(r *http.Request, c caller) (int, any, error) {
	sts, err := s.svc.Status(r.Context(), c.key().AllSubjects()...)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"key": toKey(*c.key(), s.cfg.Now()), "budgets": statuses(sts)}, nil
}

// visibleSubject refuses a manager a subject outside its scope.
func (s *API) visibleSubject(ctx context.Context, c caller, sub budget.Subject) error {
	if !c.manager() {
		return nil
	}
	ok, err := s.svc.Covers(ctx, c.scope(), sub)
	if err != nil {
		return err
	}
	if !ok {
		return outOfScope(c, "subject "+string(sub))
	}
	return nil
}

// SpendRow is one group of GET /v1/spend (or its total); amounts are decimal strings.
type SpendRow struct {
	Group            string `json:"group"`
	Cost             string `json:"cost"`
	Tokens           string `json:"tokens"`
	Requests         int64  `json:"requests"`
	Expired          int64  `json:"expired"`
	Overruns         int64  `json:"overruns"`
	OverrunCost      string `json:"overrun_cost"`
	OverrunTokens    string `json:"overrun_tokens"`
	Unreserved       int64  `json:"unreserved"`
	UnreservedCost   string `json:"unreserved_cost"`
	UnreservedTokens string `json:"unreserved_tokens"`
}

func toSpendRow(x budget.SpendRow) SpendRow {
	tok := func(v int64) string { return FormatAmount(budget.Tokens, v) }
	usd := func(v int64) string { return FormatAmount(budget.USD, v) }
	return SpendRow{
		Group: x.Group, Cost: usd(x.Cost), Tokens: tok(x.Tokens), Requests: x.Requests, Expired: x.Expired,
		Overruns: x.Overruns, OverrunCost: usd(x.OverrunCost), OverrunTokens: tok(x.OverrunTokens),
		Unreserved: x.Unreserved, UnreservedCost: usd(x.UnreservedCost), UnreservedTokens: tok(x.UnreservedTokens),
	}
}

func (s *API) spend(r *http.Request, c caller) (int, any, error) {
	q := r.URL.Query()
	format, err := queryFormat(r, formatCSV)
	if err != nil {
		return 0, nil, err
	}
	if c.manager() {
		// A spend report's groups span every subject of the requests it sums: a manager asks
		// for one of its own subjects.
		if q.Get("subject") == "" {
			return 0, nil, outOfScope(c, "spend across every subject")
		}
		sub, err := querySubject(r)
		if err != nil {
			return 0, nil, err
		}
		if err := s.visibleSubject(r.Context(), c, budget.Subject(sub)); err != nil {
			return 0, nil, err
		}
	}
	now := s.cfg.Now().UTC()
	from := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 1, 0)
	if v := q.Get("from"); v != "" {
		if from, err = parseTimeParam("from", v, false); err != nil {
			return 0, nil, err
		}
	}
	if v := q.Get("to"); v != "" {
		if to, err = parseTimeParam("to", v, true); err != nil {
			return 0, nil, err
		}
	}
	groupBy := q.Get("group_by")
	if !q.Has("group_by") {
		groupBy = budget.GroupByDay
	} else if groupBy == "" {
		return 0, nil, invalid("group_by", "must be subject, model, key or day")
	}
	limit, err := queryInt(r, "limit", 1000, 1, maxSpendRows)
	if err != nil {
		return 0, nil, err
	}
	sq := budget.SpendQuery{From: from, To: to, GroupBy: groupBy, Subject: q.Get("subject"), Limit: int(limit) + 1}
	rows, err := s.svc.Spend(r.Context(), sq)
	if err != nil {
		return 0, nil, err
	}
	sq.GroupBy, sq.Limit = budget.GroupByNone, 0
	total, err := s.svc.Spend(r.Context(), sq)
	if err != nil {
		return 0, nil, err
	}
	truncated := len(rows) > int(limit)
	if truncated {
		rows = rows[:limit]
	}
	if format == formatCSV {
		return http.StatusOK, spendCSV(rows, groupBy, from, to, truncated), nil
	}
	out := make([]SpendRow, 0, len(rows))
	for _, x := range rows {
		out = append(out, toSpendRow(x))
	}
	var tot budget.SpendRow
	if len(total) == 1 {
		tot = total[0]
	}
	body := map[string]any{
		"from": from.UTC(), "to": to.UTC(), "group_by": groupBy, "rows": out, "total": toSpendRow(tot),
		"truncated": truncated,
	}
	if sq.Subject != "" {
		body["subject"] = sq.Subject
	}
	return http.StatusOK, body, nil
}

// AuditEntry is one entry of GET /v1/audit.
type AuditEntry struct {
	ID      int64           `json:"id"`
	At      time.Time       `json:"at"`
	Actor   string          `json:"actor"`
	Action  string          `json:"action"`
	Target  string          `json:"target"`
	Details json.RawMessage `json:"details"`
}

// page reads the paging parameters of a list newest first: the id cursor and the page size.
func page(r *http.Request) (before int64, limit int, err error) {
	if before, err = queryInt(r, "before", 0, 0, 1<<62); err != nil {
		return 0, 0, err
	}
	n, err := pageSize(r)
	return before, n, err
}

// Page sizes of the lists: the "limit" parameter.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// pageSize reads the "limit" parameter of a list.
func pageSize(r *http.Request) (int, error) {
	n, err := queryInt(r, "limit", defaultPageSize, 1, maxPageSize)
	return int(n), err
}

// spendCSV is a spend report's rows as CSV: the same groups and amounts as the JSON rows
// (the total is not a row: add the rows, or ask group_by= for it).
// A report cut at its limit says so in the X-Purser-Truncated header (as "truncated" does in
// JSON).
func spendCSV(rows []budget.SpendRow, groupBy string, from, to time.Time, truncated bool) *stream {
	name := "spend-" + cmp.Or(groupBy, "total") + "-" + from.UTC().Format("20060102") + "-" + to.UTC().Format("20060102") + ".csv"
	return &stream{contentType: "text/csv; charset=utf-8", filename: name, truncated: truncated, write: func(w *bufio.Writer) error {
		cw, err := newCSV(w, cmp.Or(groupBy, "group"), "cost", "tokens", "requests", "expired", "overruns", "overrun_cost",
			"overrun_tokens", "unreserved", "unreserved_cost", "unreserved_tokens")
		if err != nil {
			return err
		}
		for _, x := range rows {
			r := toSpendRow(x)
			if err := cw.Write([]string{csvCell(r.Group), r.Cost, r.Tokens, itoa(r.Requests), itoa(r.Expired), itoa(r.Overruns),
				r.OverrunCost, r.OverrunTokens, itoa(r.Unreserved), r.UnreservedCost, r.UnreservedTokens}); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	}}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

func (s *API) audit(r *http.Request, _ caller) (int, any, error) {
	before, limit, err := page(r)
	if err != nil {
		return 0, nil, err
	}
	entries, err := s.svc.AuditLog(r.Context(), r.URL.Query().Get("target"), before, limit)
	if err != nil {
		return 0, nil, err
	}
	out := make([]AuditEntry, 0, len(entries))
	for _, e := range entries {
		d := e.Details
		if len(d) == 0 {
			d = json.RawMessage("{}")
		}
		out = append(out, AuditEntry{ID: e.ID, At: e.At.UTC(), Actor: e.Actor, Action: e.Action, Target: e.Target, Details: d})
	}
	body := map[string]any{"entries": out, "next_before": nil}
	if len(entries) == limit {
		body["next_before"] = entries[len(entries)-1].ID
	}
	return http.StatusOK, body, nil
}

type alertJSON struct {
	ID          int64           `json:"id"`
	Key         string          `json:"idempotency_key"`
	BudgetID    int64           `json:"budget_id"`
	Kind        string          `json:"kind"`
	Threshold   int             `json:"threshold"`
	WindowStart time.Time       `json:"window_start"`
	WindowEnd   time.Time       `json:"window_end"`
	Suppressed  bool            `json:"suppressed"`
	CreatedAt   time.Time       `json:"created_at"`
	Payload     json.RawMessage `json:"payload"`
	Deliveries  []deliveryJSON  `json:"deliveries"`
}

type deliveryJSON struct {
	Webhook       string     `json:"webhook"`
	State         string     `json:"state"`
	Attempts      int        `json:"attempts"`
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	DeliveredAt   *time.Time `json:"delivered_at"`
	LastError     *string    `json:"last_error"`
}

func (s *API) alerts(r *http.Request, c caller) (int, any, error) {
	budgetID, err := queryInt(r, "budget_id", 0, 0, 1<<62)
	if err != nil {
		return 0, nil, err
	}
	if c.manager() {
		if budgetID == 0 {
			return 0, nil, outOfScope(c, "the alerts of every budget")
		}
		if _, err := s.visibleBudget(r.Context(), c, budgetID); err != nil {
			return 0, nil, err
		}
	}
	before, limit, err := page(r)
	if err != nil {
		return 0, nil, err
	}
	evs, err := s.svc.AlertEvents(r.Context(), budgetID, before, limit)
	if err != nil {
		return 0, nil, err
	}
	out := make([]alertJSON, 0, len(evs))
	for _, e := range evs {
		a := alertJSON{ID: e.ID, Key: e.IdempotencyKey, BudgetID: e.BudgetID, Kind: e.Kind, Threshold: e.Threshold,
			WindowStart: e.WindowStart.UTC(), WindowEnd: e.WindowEnd.UTC(), Suppressed: e.Suppressed,
			CreatedAt: e.CreatedAt.UTC(), Payload: e.Payload, Deliveries: []deliveryJSON{}}
		for _, d := range e.Deliveries {
			dj := deliveryJSON{Webhook: d.Webhook, State: d.State, Attempts: d.Attempts, DeliveredAt: d.DeliveredAt, LastError: d.LastError}
			if d.State == budget.DeliveryPending {
				dj.NextAttemptAt = optTime(d.NextAttemptAt)
			}
			a.Deliveries = append(a.Deliveries, dj)
		}
		out = append(out, a)
	}
	body := map[string]any{"alerts": out, "next_before": nil}
	if len(evs) == limit {
		body["next_before"] = evs[len(evs)-1].ID
	}
	return http.StatusOK, body, nil
}

func (s *API) verify(r *http.Request, _ caller) (int, any, error) {
	if err := decodeBody(r, true); err != nil {
		return 0, nil, err
	}
	rep, err := s.svc.Verify(r.Context())
	if err != nil {
		return 0, nil, err
	}
	// Amounts are in each budget's unit; a deleted budget's unit is no longer readable, so its
	// amounts stay raw integers. Any other failure to read a budget fails the request.
	units := map[int64]budget.Unit{}
	ids := make([]int64, 0, len(rep.Mismatches)+len(rep.OverLimit))
	for _, m := range rep.Mismatches {
		ids = append(ids, m.BudgetID)
	}
	for _, o := range rep.OverLimit {
		ids = append(ids, o.BudgetID)
	}
	for _, id := range ids {
		if _, ok := units[id]; ok {
			continue
		}
		b, err := s.svc.Budget(r.Context(), id)
		if err != nil && !errors.Is(err, budget.ErrNotFound) {
			return 0, nil, err
		}
		units[id] = b.Unit // "" when deleted
	}
	amount := func(u budget.Unit, v int64) string {
		if u == "" {
			return strconv.FormatInt(v, 10)
		}
		return FormatAmount(u, v)
	}
	mismatches := make([]map[string]any, 0, len(rep.Mismatches))
	for _, m := range rep.Mismatches {
		u := units[m.BudgetID]
		mismatches = append(mismatches, map[string]any{
			"budget_id": m.BudgetID, "unit": string(u), "window_start": m.WindowStart.UTC(),
			"posted": amount(u, m.Posted), "pending": amount(u, m.Pending),
			"held_posted": amount(u, m.HeldPosted), "held_pending": amount(u, m.HeldPending),
			"bad_holds": m.BadHolds, "orphan_holds": m.OrphanHolds, "window_row_missing": m.MissingCount,
		})
	}
	over := make([]map[string]any, 0, len(rep.OverLimit))
	for _, o := range rep.OverLimit {
		u := units[o.BudgetID]
		over = append(over, map[string]any{
			"budget_id": o.BudgetID, "unit": string(u), "window_start": o.WindowStart.UTC(), "limit": amount(u, o.Limit),
			"posted": amount(u, o.Posted), "pending": amount(u, o.Pending), "overrun": amount(u, o.Overrun),
			"unexplained": budget.Unexplained(o),
		})
	}
	return http.StatusOK, map[string]any{"clean": rep.Clean(), "mismatches": mismatches, "over_limit": over}, nil
}
