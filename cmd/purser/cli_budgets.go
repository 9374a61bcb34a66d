package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
)

func budgetsCommand() command {
	return group("manage budgets (list, create, get, update, delete, reset, grant)", map[string]command{
		"list":   leaf("list budgets (all, or -subject S)", runBudgetsList),
		"create": leaf("create a budget", runBudgetsCreate),
		"get":    leaf("show a budget and its current window", runBudgetsGet),
		"update": leaf("change the given fields of a budget", runBudgetsUpdate),
		"delete": leaf("delete a budget (its history stays)", runBudgetsDelete),
		"reset":  leaf("start a fresh window now", runBudgetsReset),
		"grant":  leaf("raise a budget's limit temporarily", runBudgetsGrant),
	})
}

func templatesCommand() command {
	return group("manage default-budget templates (list, create, delete)", map[string]command{
		"list":   leaf("list templates", runTemplatesList),
		"create": leaf("create a template for every new subject of a kind", runTemplatesCreate),
		"delete": leaf("delete a template", runTemplatesDelete),
	})
}

// defFlags are the definition flags shared by budgets create/update and templates create.
type defFlags struct {
	name, subject, kind, limit, unit, window, timezone *string
	anchorDay                                          *int
	hard                                               *bool
	warnAt, models, endpoints, route                   listFlag
}

// addDefFlags adds the definition flags. For an update (creation false) the flags have no
// defaults: only the flags given change, so -h must not show creation defaults.
func addDefFlags(f *cliFlags, template, creation bool) *defFlags {
	d := &defFlags{}
	def := func(v string) string {
		if creation {
			return v
		}
		return ""
	}
	d.name = f.FlagSet.String("name", "", "budget name")
	if template {
		d.kind = f.FlagSet.String("kind", "", "subject kind the template attaches to: user, team, org, key, workload, namespace, tag, route, global")
	} else {
		d.subject = f.FlagSet.String("subject", "", "subject, e.g. team:ml, user:alice, global")
	}
	d.limit = f.FlagSet.String("limit", "", `limit in the unit: "12.50" USD, "150000" tokens or "600" requests`)
	d.unit = f.FlagSet.String("unit", def("usd"), "usd, tokens or requests")
	d.window = f.FlagSet.String("window", "", "minute, hour, day, week, month, quarter, year, lifetime or a rolling duration (72h)")
	d.timezone = f.FlagSet.String("timezone", def("UTC"), "IANA time zone of calendar windows")
	d.anchorDay = f.FlagSet.Int("anchor-day", 0, "day of the month month/quarter/year windows start on")
	hardText := "deny when exhausted (-hard=false: only warn)"
	if !creation {
		hardText = "-hard=true: deny when exhausted; -hard=false: only warn"
	}
	d.hard = f.FlagSet.Bool("hard", creation, hardText)
	f.Var(&d.warnAt, "warn-at", "alert thresholds in percent, e.g. 50,80")
	f.Var(&d.models, "model", "only requests whose model matches this glob (repeat)")
	f.Var(&d.endpoints, "endpoint", "only requests whose path matches this glob (repeat)")
	f.Var(&d.route, "route", "only requests whose route context has key=value (repeat)")
	return d
}

// body returns the JSON fields for the flags: all of them (create), or only those given (update).
func (d *defFlags) body(f *cliFlags, onlySet bool) (map[string]any, error) {
	m := map[string]any{}
	put := func(flag, field string, v any) {
		if !onlySet || f.set(flag) {
			m[field] = v
		}
	}
	put("name", "name", *d.name)
	if d.subject != nil {
		put("subject", "subject", *d.subject)
	}
	if d.kind != nil {
		put("kind", "subject_kind", *d.kind)
	}
	if (!onlySet && *d.limit != "") || (onlySet && f.set("limit")) {
		m["limit"] = *d.limit // absent on create: the API says it is required
	}
	put("unit", "unit", *d.unit)
	put("window", "window", *d.window)
	put("timezone", "timezone", *d.timezone)
	put("anchor-day", "anchor_day", *d.anchorDay)
	put("hard", "hard", *d.hard)
	warn := []int{}
	for _, s := range d.warnAt {
		p, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
		if err != nil {
			return nil, fmt.Errorf("-warn-at %q: want percentages such as 50,80", s)
		}
		warn = append(warn, p)
	}
	put("warn-at", "warn_at", warn)
	put("model", "models", orEmpty(d.models))
	put("endpoint", "endpoints", orEmpty(d.endpoints))
	route := map[string]string{}
	for _, kv := range d.route {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("-route %q: want key=value", kv)
		}
		route[k] = v
	}
	put("route", "route", route)
	return m, nil
}

func runBudgetsList(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("budgets list", e)
	subject := f.FlagSet.String("subject", "", "only the budgets of this subject")
	if _, err := f.parse(args, 0, 0, "[-subject S] [-o json]"); err != nil {
		return err
	}
	q := url.Values{}
	if *subject != "" {
		q.Set("subject", *subject)
	}
	var budgets []admin.Budget
	if printed, err := f.list(ctx, e, "/v1/budgets", q, "budgets", &budgets); printed || err != nil {
		return err
	}
	return printDefs(e.stdout, budgets, false)
}

// printDefs tables budgets, or templates (by subject kind).
func printDefs(w io.Writer, bs []admin.Budget, templates bool) error {
	target := func(b admin.Budget) string { return b.Subject }
	header := "SUBJECT"
	if templates {
		target, header = func(b admin.Budget) string { return b.SubjectKind }, "KIND"
	}
	tw := newTable(w)
	fmt.Fprintf(tw, "ID\t%s\tNAME\tLIMIT\tUNIT\tWINDOW\tHARD\tWARN AT\tFILTERS\n", header)
	for _, b := range bs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%t\t%s\t%s\n", b.ID, target(b), b.Name, b.Limit, b.Unit, windowLabel(b), b.Hard,
			orDash(intsLabel(b.WarnAt)), orDash(filtersLabel(b)))
	}
	return tw.Flush()
}

func windowLabel(b admin.Budget) string {
	s := b.Window
	if b.Timezone != "" && b.Timezone != "UTC" {
		s += " " + b.Timezone
	}
	if b.AnchorDay > 1 {
		s += fmt.Sprintf(" from day %d", b.AnchorDay)
	}
	return s
}

func intsLabel(v []int) string {
	s := make([]string, len(v))
	for i, p := range v {
		s[i] = strconv.Itoa(p) + "%"
	}
	return strings.Join(s, ",")
}

func filtersLabel(b admin.Budget) string {
	var parts []string
	if len(b.Models) > 0 {
		parts = append(parts, "models="+strings.Join(b.Models, ","))
	}
	if len(b.Endpoints) > 0 {
		parts = append(parts, "endpoints="+strings.Join(b.Endpoints, ","))
	}
	for _, k := range sortedKeys(b.Route) {
		parts = append(parts, "route."+k+"="+b.Route[k])
	}
	return strings.Join(parts, " ")
}

func runBudgetsCreate(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("budgets create", e)
	d := addDefFlags(f, false, true)
	if _, err := f.parse(args, 0, 0, "-name NAME -subject S -limit AMOUNT -window W [flags]"); err != nil {
		return err
	}
	body, err := d.body(f, false)
	if err != nil {
		return err
	}
	return budgetCall(ctx, e, f, "POST", "/v1/budgets", body, "created")
}

func runBudgetsUpdate(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("budgets update", e)
	d := addDefFlags(f, false, false)
	pos, err := f.parse(args, 1, 1, "ID [-limit AMOUNT] [-window W] [...only the flags given change]")
	if err != nil {
		return err
	}
	body, err := d.body(f, true)
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return f.misuse("nothing to change (give -limit, -window, -warn-at, ...)")
	}
	return budgetCall(ctx, e, f, "PATCH", "/v1/budgets/"+url.PathEscape(pos[0]), body, "updated")
}

func budgetCall(ctx context.Context, e env, f *cliFlags, method, path string, body map[string]any, verb string) error {
	var b admin.Budget
	if printed, err := f.call(ctx, e, method, path, nil, body, &b); printed || err != nil {
		return err
	}
	target := b.Subject
	if b.SubjectKind != "" {
		target = "every new " + b.SubjectKind
	}
	fmt.Fprintf(e.stdout, "%s %d %q on %s: %s %s per %s\n", verb, b.ID, b.Name, target, b.Limit, b.Unit, windowLabel(b))
	return nil
}

func runBudgetsGet(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("budgets get", e)
	pos, err := f.parse(args, 1, 1, "ID [-o json]")
	if err != nil {
		return err
	}
	var b admin.Budget
	if printed, err := f.call(ctx, e, "GET", "/v1/budgets/"+url.PathEscape(pos[0]), nil, nil, &b); printed || err != nil {
		return err
	}
	tw := newTable(e.stdout)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("id", strconv.FormatInt(b.ID, 10))
	row("name", b.Name)
	row("subject", b.Subject)
	row("limit", b.Limit+" "+b.Unit)
	row("window", windowLabel(b))
	row("hard", strconv.FormatBool(b.Hard))
	row("warn at", orDash(intsLabel(b.WarnAt)))
	row("filters", orDash(filtersLabel(b)))
	if b.Current != nil {
		w := b.Current
		row("current window", w.WindowStart.UTC().Format(time.RFC3339)+" → "+when(w.WindowEnd))
		row("effective limit", w.Limit+" (base "+w.BaseLimit+")")
		row("posted", w.Posted)
		row("pending", w.Pending)
		row("remaining", w.Remaining)
		row("utilization", strconv.Itoa(w.Utilization)+"%")
		row("burn per day", w.BurnPerDay)
		row("projected", w.Projected)
		for _, g := range w.Grants {
			row("grant", fmt.Sprintf("+%s until %s (%s)", g.Amount, g.ExpiresAt.UTC().Format(time.RFC3339), orDash(g.Reason)))
		}
	}
	return tw.Flush()
}

func runBudgetsDelete(ctx context.Context, e env, args []string) error {
	return deleteCall(ctx, e, "budgets delete", "/v1/budgets/", "budget", args)
}

func runTemplatesDelete(ctx context.Context, e env, args []string) error {
	return deleteCall(ctx, e, "templates delete", "/v1/templates/", "template", args)
}

func deleteCall(ctx context.Context, e env, name, prefix, what string, args []string) error {
	f := newCLIFlags(name, e)
	pos, err := f.parse(args, 1, 1, "ID")
	if err != nil {
		return err
	}
	// A deletion answers no body: the message is printed with -o json too.
	if _, err := f.call(ctx, e, "DELETE", prefix+url.PathEscape(pos[0]), nil, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "deleted %s %s\n", what, pos[0])
	return nil
}

func runBudgetsReset(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("budgets reset", e)
	reason := f.FlagSet.String("reason", "", "why (kept in the audit log)")
	pos, err := f.parse(args, 1, 1, "ID [-reason TEXT]")
	if err != nil {
		return err
	}
	var out struct {
		ResetAt time.Time `json:"reset_at"`
	}
	path := "/v1/budgets/" + url.PathEscape(pos[0]) + "/reset"
	if printed, err := f.call(ctx, e, "POST", path, nil, map[string]any{"reason": *reason}, &out); printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "budget %s: fresh window since %s\n", pos[0], out.ResetAt.UTC().Format(time.RFC3339))
	return nil
}

func runBudgetsGrant(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("budgets grant", e)
	amount := f.FlagSet.String("amount", "", `how much to add, in the budget's unit ("25.00" or "100000")`)
	until := f.FlagSet.String("until", "", "when the grant ends: RFC 3339 time, date, or duration from now (48h)")
	reason := f.FlagSet.String("reason", "", "why (kept in the audit log)")
	pos, err := f.parse(args, 1, 1, "ID -amount AMOUNT -until WHEN [-reason TEXT]")
	if err != nil {
		return err
	}
	if *until == "" {
		return f.misuse("-until is required")
	}
	t, err := parseWhen("until", *until, time.Now())
	if err != nil {
		return err
	}
	var g admin.Grant
	path := "/v1/budgets/" + url.PathEscape(pos[0]) + "/grants"
	body := map[string]any{"amount": *amount, "expires_at": t, "reason": *reason}
	if printed, err := f.call(ctx, e, "POST", path, nil, body, &g); printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "budget %s: +%s until %s (grant %d)\n", pos[0], g.Amount, g.ExpiresAt.UTC().Format(time.RFC3339), g.ID)
	return nil
}

func runTemplatesList(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("templates list", e)
	if _, err := f.parse(args, 0, 0, "[-o json]"); err != nil {
		return err
	}
	var out struct {
		Templates []admin.Budget `json:"templates"`
	}
	if printed, err := f.call(ctx, e, "GET", "/v1/templates", nil, nil, &out); printed || err != nil {
		return err
	}
	return printDefs(e.stdout, out.Templates, true)
}

func runTemplatesCreate(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("templates create", e)
	d := addDefFlags(f, true, true)
	if _, err := f.parse(args, 0, 0, "-name NAME -kind KIND -limit AMOUNT -window W [flags]"); err != nil {
		return err
	}
	body, err := d.body(f, false)
	if err != nil {
		return err
	}
	return budgetCall(ctx, e, f, "POST", "/v1/templates", body, "created template")
}
