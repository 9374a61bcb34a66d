package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

// `purser apply -f budgets.yaml` makes the platform-level keys, budgets and default-budget
// templates declared in a file exist as declared, through the admin API, idempotently:
//
//	keys:                      # by name (live keys); new keys print their secret once
//	  - name: ci-bot
//	    subjects: [team:ml]
//	    allowed_models: ["gpt-4o*"]
//	    expires_at: 2027-01-01T00:00:00Z
//	budgets:                   # by subject + name
//	  - name: ml monthly
//	    subject: team:ml
//	    limit: "500.00"        # USD, or whole tokens / requests with unit: tokens / requests
//	    window: month
//	    warn_at: [50, 80]
//	templates:                 # by name: a budget for every new subject of a kind
//	  - name: user default
//	    subject_kind: user
//	    limit: "10"
//	    window: month
//	managed_subjects: [org:acme]   # optional: more subjects whose budgets -prune may delete
//
// Per-tenant budgets stay rows in Postgres (from templates, or the API): -prune deletes only
// budgets on the file's subjects (declared budgets' subjects and managed_subjects) that are not
// made from a template, and templates when the file has a templates: section. Keys are never
// revoked by apply (revocation cannot be undone): revoke them with `purser keys revoke`.

func applyCommand() command {
	return leaf("make the keys, budgets and templates of a YAML file exist as declared", runApply)
}

// maxApplyFile bounds the file.
const maxApplyFile = 8 << 20

type applyFile struct {
	Keys            []json.RawMessage `json:"keys"`
	Budgets         []json.RawMessage `json:"budgets"`
	Templates       []json.RawMessage `json:"templates"`
	ManagedSubjects []string          `json:"managed_subjects"`
}

type keyDecl struct {
	Name          string   `json:"name"`
	Subjects      []string `json:"subjects"`
	AllowedModels []string `json:"allowed_models"`
	ExpiresAt     string   `json:"expires_at"`
}

type defDecl struct {
	Name        string            `json:"name"`
	Subject     string            `json:"subject"`
	SubjectKind string            `json:"subject_kind"`
	Limit       json.RawMessage   `json:"limit"`
	Unit        string            `json:"unit"`
	Window      string            `json:"window"`
	Timezone    string            `json:"timezone"`
	AnchorDay   int               `json:"anchor_day"`
	Hard        *bool             `json:"hard"`
	WarnAt      []int             `json:"warn_at"`
	Models      []string          `json:"models"`
	Endpoints   []string          `json:"endpoints"`
	Route       map[string]string `json:"route"`
}

// defState is a budget or template definition normalised for comparison.
type defState struct {
	ID        int64
	Name      string
	Target    string // subject, or subject kind for templates
	Unit      budget.Unit
	Limit     int64
	Window    string
	Timezone  string
	AnchorDay int
	Hard      bool
	WarnAt    []int
	Models    []string
	Endpoints []string
	Route     map[string]string
	Template  bool // a budget made from a template
}

type keyState struct {
	ID            string
	Name          string
	Subjects      []string
	AllowedModels []string
	ExpiresAt     time.Time // zero: never
}

// desired is the parsed, validated file.
type desired struct {
	keys            []keyState
	budgets         []defState
	templates       []defState
	manageTemplates bool
	managedSubjects map[string]bool
}

// loadApplyFile reads (path "-": stdin) and validates a file; errors name the item path
// (budgets[2].limit), not the file.
func loadApplyFile(stdin io.Reader, path string) (desired, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return desired{}, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxApplyFile+1))
	if err != nil {
		return desired{}, fmt.Errorf("read: %w", err)
	}
	if len(data) > maxApplyFile {
		return desired{}, fmt.Errorf("larger than %d bytes", maxApplyFile)
	}
	return parseApplyFile(data)
}

func parseApplyFile(data []byte) (desired, error) {
	var d desired
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return d, fmt.Errorf("not valid YAML: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil || top == nil {
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			return d, errors.New("the file is empty")
		}
		return d, errors.New("the file must be a mapping with keys, budgets, templates and managed_subjects")
	}
	var f applyFile
	if err := decodeStrict(js, &f, ""); err != nil {
		return d, err
	}
	_, d.manageTemplates = top["templates"]
	d.managedSubjects = map[string]bool{}
	for i, s := range f.ManagedSubjects {
		if _, err := budget.ParseSubject(s); err != nil {
			return d, fmt.Errorf("managed_subjects[%d]: %w", i, err)
		}
		d.managedSubjects[s] = true
	}

	seen := map[string]string{}
	dup := func(id, path string) error {
		if prev, ok := seen[id]; ok {
			return fmt.Errorf("%s: duplicate of %s", path, prev)
		}
		seen[id] = path
		return nil
	}
	for i, raw := range f.Keys {
		path := fmt.Sprintf("keys[%d]", i)
		var k keyDecl
		if err := decodeStrict(raw, &k, path); err != nil {
			return d, err
		}
		ks, err := k.state(path)
		if err != nil {
			return d, err
		}
		if err := dup("key "+ks.Name, path+fmt.Sprintf(" (key %q)", ks.Name)); err != nil {
			return d, err
		}
		d.keys = append(d.keys, ks)
	}
	for i, raw := range f.Budgets {
		path := fmt.Sprintf("budgets[%d]", i)
		var b defDecl
		if err := decodeStrict(raw, &b, path); err != nil {
			return d, err
		}
		st, err := b.state(path, false)
		if err != nil {
			return d, err
		}
		if err := dup("budget "+st.Target+"\x00"+st.Name, fmt.Sprintf("%s (budget %q on %s)", path, st.Name, st.Target)); err != nil {
			return d, err
		}
		d.budgets = append(d.budgets, st)
		d.managedSubjects[st.Target] = true
	}
	for i, raw := range f.Templates {
		path := fmt.Sprintf("templates[%d]", i)
		var b defDecl
		if err := decodeStrict(raw, &b, path); err != nil {
			return d, err
		}
		st, err := b.state(path, true)
		if err != nil {
			return d, err
		}
		if err := dup("template "+st.Name, fmt.Sprintf("%s (template %q)", path, st.Name)); err != nil {
			return d, err
		}
		d.templates = append(d.templates, st)
	}
	return d, nil
}

// decodeStrict decodes JSON rejecting unknown fields, with errors that name the path.
func decodeStrict(raw json.RawMessage, dst any, path string) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		return nil
	}
	join := func(field string) string {
		if path == "" {
			return field
		}
		if field == "" {
			return path
		}
		return path + "." + field
	}
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		return fmt.Errorf("%s: want %s, got %s", join(te.Field), jsonKind(te.Type.Kind().String()), te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("%s: unknown field %s", orRoot(path), strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return fmt.Errorf("%s: %w", orRoot(path), err)
}

func orRoot(path string) string {
	if path == "" {
		return "file"
	}
	return path
}

func jsonKind(k string) string {
	switch k {
	case "slice":
		return "a list"
	case "map", "struct":
		return "a mapping"
	case "int", "int64":
		return "an integer"
	case "bool", "ptr":
		return "true or false"
	}
	return "a " + k
}

func (k keyDecl) state(path string) (keyState, error) {
	ks := keyState{Name: k.Name, Subjects: k.Subjects, AllowedModels: k.AllowedModels}
	if k.ExpiresAt != "" {
		t, err := time.Parse(time.RFC3339, k.ExpiresAt)
		if err != nil {
			if t, err = time.Parse(time.DateOnly, k.ExpiresAt); err != nil {
				return ks, fmt.Errorf("%s.expires_at: %q: want an RFC 3339 time or a date (2027-01-01)", path, k.ExpiresAt)
			}
		}
		ks.ExpiresAt = t.UTC()
	}
	// The same checks the ledger makes, before anything is sent (expiry is checked by the API).
	if k.Name == "" {
		return ks, fmt.Errorf("%s.name: is required", path)
	}
	if _, err := budget.ParseSubjects(k.Subjects); err != nil {
		return ks, fmt.Errorf("%s.subjects: %w", path, err)
	}
	for i, m := range k.AllowedModels {
		if _, err := budget.ParseGlob(m); err != nil {
			return ks, fmt.Errorf("%s.allowed_models[%d]: %w", path, i, err)
		}
	}
	return ks, nil
}

func (b defDecl) state(path string, template bool) (defState, error) {
	if template && b.Subject != "" {
		return defState{}, fmt.Errorf("%s.subject: templates take subject_kind, not subject", path)
	}
	if !template && b.SubjectKind != "" {
		return defState{}, fmt.Errorf("%s.subject_kind: budgets take subject, not subject_kind (or declare it under templates)", path)
	}
	unit := strings.ToLower(b.Unit)
	if unit == "" {
		unit = "usd"
	}
	if _, err := budget.ParseUnit(unit); err != nil {
		return defState{}, fmt.Errorf("%s.unit: %w", path, err)
	}
	limit, err := declLimit(b.Limit, unit)
	if err != nil {
		return defState{}, fmt.Errorf("%s.limit: %w", path, err)
	}
	hard := true
	if b.Hard != nil {
		hard = *b.Hard
	}
	def := budget.Definition{Name: b.Name, Subject: b.Subject, Kind: b.SubjectKind, Unit: unit, Limit: limit, Window: b.Window,
		TimeZone: b.Timezone, AnchorDay: b.AnchorDay, Hard: hard, WarnAt: b.WarnAt, Models: b.Models, Endpoints: b.Endpoints, Route: b.Route}
	if template && b.SubjectKind == "" {
		return defState{}, fmt.Errorf("%s.subject_kind: is required", path)
	}
	built, err := def.Build()
	if err != nil {
		var fe *budget.FieldError
		if errors.As(err, &fe) {
			return defState{}, errors.New(tidyMessage(fmt.Sprintf("%s.%s: %v", path, fe.Field, fe.Err)))
		}
		return defState{}, fmt.Errorf("%s: %w", path, err)
	}
	st := stateOf(built.Definition(), built.ID)
	st.Target = b.Subject
	if template {
		st.Target = b.SubjectKind
	}
	return st, nil
}

// declLimit reads a limit written as a string ("12.50") or a whole YAML number (12).
func declLimit(raw json.RawMessage, unit string) (int64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, errors.New("is required")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		s = string(raw)
		if strings.TrimLeft(s, "0123456789") != "" {
			return 0, fmt.Errorf("write %s as a quoted decimal string (\"12.50\"): YAML numbers with a fraction or exponent go through floating point", s)
		}
	}
	return admin.ParseAmount(budget.Unit(unit), s)
}

// stateOf normalises a definition: the window as WindowString writes it, UTC for no time zone,
// empty lists and maps as nil.
func stateOf(d budget.Definition, id int64) defState {
	st := defState{ID: id, Name: d.Name, Unit: budget.Unit(d.Unit), Limit: d.Limit, Window: d.Window, Timezone: d.TimeZone,
		AnchorDay: d.AnchorDay, Hard: d.Hard, WarnAt: slices.Clone(d.WarnAt), Models: d.Models, Endpoints: d.Endpoints, Route: d.Route}
	if st.Timezone == "" {
		st.Timezone = "UTC"
	}
	if dur, err := time.ParseDuration(st.Window); err == nil {
		st.Window = dur.String()
	}
	slices.Sort(st.WarnAt)
	if len(st.WarnAt) == 0 {
		st.WarnAt = nil
	}
	if len(st.Models) == 0 {
		st.Models = nil
	}
	if len(st.Endpoints) == 0 {
		st.Endpoints = nil
	}
	if len(st.Route) == 0 {
		st.Route = nil
	}
	return st
}

// stateFromView normalises a budget or template as the API shows it.
func stateFromView(v admin.Budget, template bool) (defState, error) {
	limit, err := admin.ParseAmount(budget.Unit(v.Unit), v.Limit)
	if err != nil {
		return defState{}, fmt.Errorf("budget %d from the API: limit %q: %w", v.ID, v.Limit, err)
	}
	st := stateOf(budget.Definition{Name: v.Name, Unit: v.Unit, Limit: limit, Window: v.Window, TimeZone: v.Timezone,
		AnchorDay: v.AnchorDay, Hard: v.Hard, WarnAt: v.WarnAt, Models: v.Models, Endpoints: v.Endpoints, Route: v.Route}, v.ID)
	st.Target = v.Subject
	if template {
		st.Target = v.SubjectKind
	}
	st.Template = v.TemplateID != nil
	return st, nil
}

// diffDef lists the fields that differ, "field: before → after".
func diffDef(cur, want defState) []string {
	var out []string
	add := func(field, a, b string) {
		if a != b {
			out = append(out, fmt.Sprintf("%s %s → %s", field, a, b))
		}
	}
	add("limit", admin.FormatAmount(cur.Unit, cur.Limit)+" "+string(cur.Unit), admin.FormatAmount(want.Unit, want.Limit)+" "+string(want.Unit))
	add("window", cur.Window, want.Window)
	add("timezone", cur.Timezone, want.Timezone)
	add("anchor_day", strconv.Itoa(cur.AnchorDay), strconv.Itoa(want.AnchorDay))
	add("hard", strconv.FormatBool(cur.Hard), strconv.FormatBool(want.Hard))
	add("warn_at", fmt.Sprint(orEmpty(cur.WarnAt)), fmt.Sprint(orEmpty(want.WarnAt)))
	add("models", fmt.Sprint(orEmpty(cur.Models)), fmt.Sprint(orEmpty(want.Models)))
	add("endpoints", fmt.Sprint(orEmpty(cur.Endpoints)), fmt.Sprint(orEmpty(want.Endpoints)))
	add("route", routeLabel(cur.Route), routeLabel(want.Route))
	return out
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func routeLabel(m map[string]string) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func diffKey(cur, want keyState) []string {
	var out []string
	sortedCopy := func(s []string) []string { c := slices.Clone(s); slices.Sort(c); return orEmpty(c) }
	if a, b := sortedCopy(cur.Subjects), sortedCopy(want.Subjects); !slices.Equal(a, b) {
		out = append(out, fmt.Sprintf("subjects %v → %v", a, b))
	}
	if a, b := sortedCopy(cur.AllowedModels), sortedCopy(want.AllowedModels); !slices.Equal(a, b) {
		out = append(out, fmt.Sprintf("allowed_models %v → %v", a, b))
	}
	if !cur.ExpiresAt.Equal(want.ExpiresAt) {
		out = append(out, fmt.Sprintf("expires_at %s → %s", expiryLabel(cur.ExpiresAt), expiryLabel(want.ExpiresAt)))
	}
	return out
}

func expiryLabel(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func defBody(st defState, template bool) map[string]any {
	m := map[string]any{
		"name": st.Name, "unit": st.Unit, "limit": admin.FormatAmount(st.Unit, st.Limit), "window": st.Window,
		"timezone": st.Timezone, "anchor_day": st.AnchorDay, "hard": st.Hard, "warn_at": orEmpty(st.WarnAt),
		"models": orEmpty(st.Models), "endpoints": orEmpty(st.Endpoints), "route": st.Route,
	}
	if m["route"] == nil {
		m["route"] = map[string]string{}
	}
	if template {
		m["subject_kind"] = st.Target
	} else {
		m["subject"] = st.Target
	}
	return m
}

func keyBody(k keyState) map[string]any {
	m := map[string]any{"name": k.Name, "subjects": orEmpty(k.Subjects), "allowed_models": orEmpty(k.AllowedModels), "expires_at": nil}
	if !k.ExpiresAt.IsZero() {
		m["expires_at"] = k.ExpiresAt
	}
	return m
}

// change is one step of a plan.
type change struct {
	line   string // "+ budget ...", "~ ...", "- ..."
	method string
	path   string
	body   any
	key    string // a key's name: print the secret of the answer
}

func describeDef(st defState, template bool) string {
	what := fmt.Sprintf("budget %q on %s", st.Name, st.Target)
	if template {
		what = fmt.Sprintf("template %q for every new %s", st.Name, st.Target)
	}
	return what
}

// plan compares the file with the API's current state.
func plan(ctx context.Context, c *apiClient, d desired, prune bool) ([]change, error) {
	var changes []change

	// Templates, by name.
	var tv struct {
		Templates []admin.Budget `json:"templates"`
	}
	if _, err := c.do(ctx, "GET", "/v1/templates", nil, nil, &tv); err != nil {
		return nil, err
	}
	curTemplates := map[string]defState{}
	for _, v := range tv.Templates {
		st, err := stateFromView(v, true)
		if err != nil {
			return nil, err
		}
		curTemplates[st.Name] = st
	}
	declared := map[string]bool{}
	for _, want := range d.templates {
		declared[want.Name] = true
		cur, ok := curTemplates[want.Name]
		if !ok {
			changes = append(changes, change{line: fmt.Sprintf("+ %s: %s %s per %s", describeDef(want, true),
				admin.FormatAmount(want.Unit, want.Limit), want.Unit, want.Window), method: "POST", path: "/v1/templates", body: defBody(want, true)})
			continue
		}
		diff := diffDef(cur, want)
		if cur.Target != want.Target {
			diff = append([]string{fmt.Sprintf("subject_kind %s → %s", cur.Target, want.Target)}, diff...)
		}
		if len(diff) > 0 {
			changes = append(changes, change{line: fmt.Sprintf("~ %s: %s", describeDef(want, true), strings.Join(diff, ", ")),
				method: "PATCH", path: fmt.Sprintf("/v1/templates/%d", cur.ID), body: defBody(want, true)})
		}
	}

	// Budgets, by subject and name, on the subjects the file manages.
	curBudgets := map[string]defState{}
	var pruneBudgets []defState
	for _, subject := range sortedKeys(d.managedSubjects) {
		// A fresh slice per subject: decoding into the previous one would keep its elements'
		// fields the API omits (template_id) and merge their route maps.
		var budgets []admin.Budget
		if err := c.listInto(ctx, "/v1/budgets", url.Values{"subject": {subject}}, "budgets", &budgets); err != nil {
			return nil, err
		}
		for _, v := range budgets {
			st, err := stateFromView(v, false)
			if err != nil {
				return nil, err
			}
			curBudgets[st.Target+"\x00"+st.Name] = st
		}
	}
	declaredBudgets := map[string]bool{}
	for _, want := range d.budgets {
		id := want.Target + "\x00" + want.Name
		declaredBudgets[id] = true
		cur, ok := curBudgets[id]
		if !ok {
			changes = append(changes, change{line: fmt.Sprintf("+ %s: %s %s per %s", describeDef(want, false),
				admin.FormatAmount(want.Unit, want.Limit), want.Unit, want.Window), method: "POST", path: "/v1/budgets", body: defBody(want, false)})
			continue
		}
		if diff := diffDef(cur, want); len(diff) > 0 {
			changes = append(changes, change{line: fmt.Sprintf("~ %s: %s", describeDef(want, false), strings.Join(diff, ", ")),
				method: "PATCH", path: fmt.Sprintf("/v1/budgets/%d", cur.ID), body: defBody(want, false)})
		}
	}
	for _, id := range sortedKeys(curBudgets) {
		if st := curBudgets[id]; !declaredBudgets[id] && !st.Template {
			pruneBudgets = append(pruneBudgets, st)
		}
	}

	// Keys, by name among the keys not revoked.
	var keys []admin.Key
	if len(d.keys) > 0 {
		if err := c.listInto(ctx, "/v1/keys", nil, "keys", &keys); err != nil {
			return nil, err
		}
	}
	curKeys := map[string]keyState{}
	for _, k := range keys {
		if k.State == "revoked" {
			continue
		}
		if _, dup := curKeys[k.Name]; dup {
			return nil, fmt.Errorf("several live keys are named %q: apply manages keys by name; revoke or rename the extra ones", k.Name)
		}
		ks := keyState{ID: k.ID, Name: k.Name, Subjects: k.Subjects, AllowedModels: k.AllowedModels}
		if k.ExpiresAt != nil {
			ks.ExpiresAt = k.ExpiresAt.UTC()
		}
		curKeys[k.Name] = ks
	}
	for _, want := range d.keys {
		cur, ok := curKeys[want.Name]
		if !ok {
			changes = append(changes, change{line: fmt.Sprintf("+ key %q (subjects %v)", want.Name, orEmpty(want.Subjects)),
				method: "POST", path: "/v1/keys", body: keyBody(want), key: want.Name})
			continue
		}
		if diff := diffKey(cur, want); len(diff) > 0 {
			changes = append(changes, change{line: fmt.Sprintf("~ key %q: %s", want.Name, strings.Join(diff, ", ")),
				method: "PATCH", path: "/v1/keys/" + url.PathEscape(cur.ID), body: keyBody(want)})
		}
	}

	if prune {
		for _, st := range pruneBudgets {
			changes = append(changes, change{line: fmt.Sprintf("- %s (not in the file)", describeDef(st, false)),
				method: "DELETE", path: fmt.Sprintf("/v1/budgets/%d", st.ID)})
		}
		if d.manageTemplates {
			for _, name := range sortedKeys(curTemplates) {
				if !declared[name] {
					st := curTemplates[name]
					changes = append(changes, change{line: fmt.Sprintf("- %s (not in the file)", describeDef(st, true)),
						method: "DELETE", path: fmt.Sprintf("/v1/templates/%d", st.ID)})
				}
			}
		}
	}
	return changes, nil
}

func runApply(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("apply", e)
	file := f.FlagSet.String("f", "", "the YAML file (- for stdin)")
	dryRun := f.FlagSet.Bool("dry-run", false, "print the changes; change nothing")
	prune := f.FlagSet.Bool("prune", false, "also delete budgets of the file's subjects and templates that the file does not declare")
	if _, err := f.parse(args, 0, 0, "-f FILE [-dry-run] [-prune]"); err != nil {
		return err
	}
	if *file == "" {
		return f.misuse("-f FILE is required")
	}
	d, err := loadApplyFile(e.stdin, *file)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	changes, err := plan(ctx, c, d, *prune)
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintln(e.stdout, "no changes")
		return nil
	}
	if *dryRun {
		for _, ch := range changes {
			fmt.Fprintln(e.stdout, ch.line)
		}
		fmt.Fprintf(e.stdout, "dry run: %d change(s), nothing applied\n", len(changes))
		return nil
	}
	for i, ch := range changes {
		var k admin.Key
		var answer any
		if ch.key != "" {
			answer = &k
		}
		if _, err := c.do(ctx, ch.method, ch.path, nil, ch.body, answer); err != nil {
			return fmt.Errorf("%s\n  failed: %w (%d of %d changes applied; fix and run apply again)", ch.line, err, i, len(changes))
		}
		fmt.Fprintln(e.stdout, ch.line)
		if ch.key != "" {
			fmt.Fprintf(e.stdout, "    key %s secret (shown once, store it now): %s\n", k.ID, k.Key)
		}
	}
	fmt.Fprintf(e.stdout, "applied %d change(s)\n", len(changes))
	return nil
}
