package main

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

func statusCommand() command {
	return leaf("show every budget of a subject: spend, remaining, burn rate, projection", runStatus)
}

func spendCommand() command {
	return leaf("report settled spend grouped by subject, model, key or day", runSpend)
}

func auditCommand() command {
	return leaf("show the audit log (newest first)", runAudit)
}

func runStatus(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("status", e)
	subjects, err := f.parse(args, 1, -1, "SUBJECT... [-o json]")
	if err != nil {
		return err
	}
	var out struct {
		Budgets []admin.Budget   `json:"budgets"`
		Usage   admin.UsageWatch `json:"usage"`
	}
	if printed, err := f.call(ctx, e, "GET", "/v1/status", url.Values{"subject": subjects}, nil, &out); printed || err != nil {
		return err
	}
	defer fmt.Fprintln(e.stdout, usageLine(out.Usage))
	if len(out.Budgets) == 0 {
		fmt.Fprintln(e.stdout, "no budgets")
		return nil
	}
	tw := newTable(e.stdout)
	fmt.Fprintln(tw, "ID\tSUBJECT\tNAME\tUSED\tLIMIT\tUSE%\tREMAINING\tBURN/DAY\tPROJECTED\tRESETS\tRUNS OUT")
	for _, b := range out.Budgets {
		w := b.Current
		if w == nil {
			continue
		}
		used := addAmounts(b.Unit, w.Posted, w.Pending)
		runsOut := "no"
		switch {
		case w.DaysUntilExhausted != nil && *w.DaysUntilExhausted == 0:
			runsOut = "exhausted"
		case w.RunsOutBeforeReset && w.DaysUntilExhausted != nil:
			runsOut = fmt.Sprintf("in %.1f days", *w.DaysUntilExhausted)
		case w.RunsOutBeforeReset:
			runsOut = "before reset"
		}
		resets := "never"
		if w.DaysUntilReset != nil {
			resets = fmt.Sprintf("in %.1f days", *w.DaysUntilReset)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d%%\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Subject, b.Name, used, w.Limit+unitSuffix(b.Unit),
			w.Utilization, w.Remaining, w.BurnPerDay, w.Projected, resets, runsOut)
	}
	return tw.Flush()
}

func unitSuffix(unit string) string {
	switch unit {
	case "tokens":
		return " tok"
	case "requests":
		return " req"
	}
	return " usd"
}

// addAmounts adds two decimal amounts of the API exactly (as integers of the unit's scale).
func addAmounts(unit, a, b string) string {
	u := budget.Unit(unit)
	x, err1 := admin.ParseAmount(u, a)
	y, err2 := admin.ParseAmount(u, b)
	if err1 != nil || err2 != nil {
		return a + "+" + b
	}
	return admin.FormatAmount(u, x+y)
}

func runSpend(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("spend", e)
	from := f.FlagSet.String("from", "", "start: RFC 3339 time or date (default: the 1st of this month, UTC)")
	to := f.FlagSet.String("to", "", "end: RFC 3339 time (exclusive) or date (inclusive) (default: end of this month)")
	groupBy := f.FlagSet.String("group-by", "day", "subject, model, key or day")
	subject := f.FlagSet.String("subject", "", "only requests that carried this subject")
	limit := f.FlagSet.Int("limit", 0, "at most this many rows (default 1000)")
	if _, err := f.parse(args, 0, 0, "[-from T] [-to T] [-group-by subject|model|key|day] [-subject S] [-o json]"); err != nil {
		return err
	}
	q := url.Values{"group_by": {*groupBy}}
	for k, v := range map[string]string{"from": *from, "to": *to, "subject": *subject} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *limit > 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	var out struct {
		From      time.Time        `json:"from"`
		To        time.Time        `json:"to"`
		Rows      []admin.SpendRow `json:"rows"`
		Total     admin.SpendRow   `json:"total"`
		Truncated bool             `json:"truncated"`
	}
	if printed, err := f.call(ctx, e, "GET", "/v1/spend", q, nil, &out); printed || err != nil {
		return err
	}
	tw := newTable(e.stdout)
	fmt.Fprintf(tw, "%s\tCOST USD\tTOKENS\tREQUESTS\tEXPIRED\tOVERRUNS\tUNRESERVED USD\n", map[string]string{
		"subject": "SUBJECT", "model": "MODEL", "key": "KEY", "day": "DAY (UTC)"}[*groupBy])
	line := func(r admin.SpendRow) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", orDash(r.Group), r.Cost, r.Tokens, r.Requests, r.Expired, r.Overruns, r.UnreservedCost)
	}
	for _, r := range out.Rows {
		line(r)
	}
	out.Total.Group = "TOTAL"
	line(out.Total)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\n%s → %s", out.From.UTC().Format(time.RFC3339), out.To.UTC().Format(time.RFC3339))
	if *groupBy == "subject" {
		fmt.Fprint(e.stdout, "; a request counts under each of its subjects, the total once")
	}
	if out.Truncated {
		fmt.Fprintf(e.stdout, "; only the first %d rows (use -limit)", len(out.Rows))
	}
	fmt.Fprintln(e.stdout)
	return nil
}

func runAudit(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("audit", e)
	target := f.FlagSet.String("target", "", "only entries about this target (budget:12, key:key_..., template:3)")
	before := f.FlagSet.Int64("before", 0, "only entries older than this id (paging)")
	limit := f.FlagSet.Int("limit", 50, "at most this many entries (1-1000)")
	if _, err := f.parse(args, 0, 0, "[-target T] [-before ID] [-limit N] [-o json]"); err != nil {
		return err
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *target != "" {
		q.Set("target", *target)
	}
	if *before > 0 {
		q.Set("before", strconv.FormatInt(*before, 10))
	}
	var out struct {
		Entries    []admin.AuditEntry `json:"entries"`
		NextBefore *int64             `json:"next_before"`
	}
	if printed, err := f.call(ctx, e, "GET", "/v1/audit", q, nil, &out); printed || err != nil {
		return err
	}
	units := budgetUnits{f: f, ctx: ctx, units: map[string]string{}}
	tw := newTable(e.stdout)
	fmt.Fprintln(tw, "ID\tAT\tACTOR\tACTION\tTARGET\tDETAILS")
	for _, en := range out.Entries {
		d := orDash(en.DetailsText(units.of))
		if r := []rune(d); len(r) > 120 { // whole characters: names may be any UTF-8
			d = string(r[:117]) + "..."
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", en.ID, en.At.UTC().Format(time.RFC3339), en.Actor, en.Action, en.Target, d)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if out.NextBefore != nil {
		fmt.Fprintf(e.stdout, "more: purser audit -before %d\n", *out.NextBefore)
	}
	return nil
}

// usageLine is the missing-usage watchdog's line under purser status: a deployment that
// charges full holds because usage never arrives must not go unnoticed.
func usageLine(u admin.UsageWatch) string {
	missing := u.WithoutUsage + u.Expired
	switch {
	case u.Resolved == 0:
		return "usage (last hour): no requests resolved"
	case missing == 0:
		return fmt.Sprintf("usage (last hour): all %d resolved requests settled from their reported usage", u.Resolved)
	}
	line := fmt.Sprintf("usage (last hour): WARNING %d of %d resolved requests (%d%%) were charged their whole hold: %d without usage, %d without an access-log entry",
		missing, u.Resolved, (missing*100+u.Resolved-1)/u.Resolved, u.WithoutUsage, u.Expired)
	if len(u.Worst) > 0 {
		w := u.Worst[0]
		line += fmt.Sprintf("; worst: route %q (%s %s) %d of %d", w.Route, w.Provider, w.Model, w.WithoutUsage+w.Expired, w.Resolved)
	}
	return line + "; run purser doctor"
}

// budgetUnits finds the unit of a budget an audit entry names (a grant's details carry its
// amount, not the budget's unit), once per budget.
type budgetUnits struct {
	f     *cliFlags
	ctx   context.Context
	units map[string]string
}

func (b budgetUnits) of(target string) string {
	id, ok := strings.CutPrefix(target, "budget:")
	if !ok {
		return ""
	}
	if u, ok := b.units[id]; ok {
		return u
	}
	var bud admin.Budget
	if c, err := b.f.client(); err == nil {
		// An error leaves bud empty: the budget is gone or unreachable, its amounts stay raw.
		_, _ = c.do(b.ctx, "GET", "/v1/budgets/"+url.PathEscape(id), nil, nil, &bud)
	}
	b.units[id] = bud.Unit
	return bud.Unit
}
