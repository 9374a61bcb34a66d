package console

import (
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
)

// notices are the short confirmations a redirect after a change shows (?m=...): fixed texts,
// so a URL can never put words on a page.
var notices = map[string]string{
	"saved": "Budget saved.", "deleted": "Budget deleted.", "granted": "Grant added.", "revoked": "Revoked.",
}

func notice(r *http.Request) string { return notices[r.URL.Query().Get("m")] }

// budgetList is a page of budgets with their current windows.
type budgetList struct {
	Budgets    []admin.Budget `json:"budgets"`
	NextAfter  *int64         `json:"next_after"`
	PrevBefore *int64         `json:"prev_before"`
}

type spendReport struct {
	From      time.Time        `json:"from"`
	To        time.Time        `json:"to"`
	GroupBy   string           `json:"group_by"`
	Rows      []admin.SpendRow `json:"rows"`
	Total     admin.SpendRow   `json:"total"`
	Truncated bool             `json:"truncated"`
}

type spendCard struct {
	Label        string
	Today, Month admin.SpendRow
}

type overviewData struct {
	Top        []admin.Budget
	Cards      []spendCard
	Alerts     []alert
	AlertsSeen bool
	Chart      template.HTML
	Days       []admin.SpendRow
	Mine       []admin.Budget // a key holder's budgets
	Key        *admin.Key
}

type alert struct {
	ID        int64     `json:"id"`
	BudgetID  int64     `json:"budget_id"`
	Kind      string    `json:"kind"`
	Threshold int       `json:"threshold"`
	CreatedAt time.Time `json:"created_at"`
	Payload   struct {
		Budget struct {
			Name    string `json:"name"`
			Subject string `json:"subject"`
		} `json:"budget"`
	} `json:"payload"`
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	ctx := r.Context()
	var d overviewData
	if s.IsKey() {
		var me struct {
			Key     admin.Key      `json:"key"`
			Budgets []admin.Budget `json:"budgets"`
		}
		if err := c.get(ctx, s.p, "/v1/me", nil, &me); err != nil {
			c.fail(w, r, s, err)
			return
		}
		d.Mine, d.Key = me.Budgets, &me.Key
		c.render(w, r, http.StatusOK, "overview", &page{Title: "My budgets", Nav: "overview", S: s, Data: d})
		return
	}
	var top budgetList
	if err := c.get(ctx, s.p, "/v1/budgets", url.Values{"sort": {"utilization"}, "limit": {"10"}}, &top); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Top = top.Budgets
	now := c.cfg.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	card := func(label, subject string) (spendCard, error) {
		sc := spendCard{Label: label}
		for _, x := range []struct {
			from, to time.Time
			dst      *admin.SpendRow
		}{{today, today.AddDate(0, 0, 1), &sc.Today}, {time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC), time.Time{}, &sc.Month}} {
			q := url.Values{"group_by": {"model"}, "limit": {"1"}, "from": {x.from.Format(time.RFC3339)}} // the total is all we read
			if !x.to.IsZero() {
				q.Set("to", x.to.Format(time.RFC3339))
			}
			if subject != "" {
				q.Set("subject", subject)
			}
			var rep spendReport
			if err := c.get(ctx, s.p, "/v1/spend", q, &rep); err != nil {
				return sc, err
			}
			*x.dst = rep.Total
		}
		return sc, nil
	}
	if s.ReadsAll() {
		sc, err := card("Everything", "")
		if err != nil {
			c.fail(w, r, s, err)
			return
		}
		d.Cards = append(d.Cards, sc)
		var rep spendReport
		if err := c.get(ctx, s.p, "/v1/spend", url.Values{"group_by": {"day"}}, &rep); err != nil {
			c.fail(w, r, s, err)
			return
		}
		d.Days = rep.Rows
		var bars []bar
		for _, x := range rep.Rows {
			bars = append(bars, bar{Label: strings.TrimPrefix(x.Group, x.Group[:min(5, len(x.Group))]), Value: amountOf("usd", x.Cost)})
		}
		d.Chart = barChart("days-chart", "Spend per day this month (UTC)", "usd", bars, false)
		var al struct {
			Alerts []alert `json:"alerts"`
		}
		if err := c.get(ctx, s.p, "/v1/alerts", url.Values{"limit": {"8"}}, &al); err != nil {
			c.fail(w, r, s, err)
			return
		}
		d.Alerts, d.AlertsSeen = al.Alerts, true
	} else {
		// A manager's spend is per subject it administers (exact entries of its scope).
		for _, e := range s.p.Actor.Scope {
			if strings.HasSuffix(e, "*") || len(d.Cards) == 4 {
				continue
			}
			sc, err := card(e, e)
			if err != nil {
				c.fail(w, r, s, err)
				return
			}
			d.Cards = append(d.Cards, sc)
		}
	}
	c.render(w, r, http.StatusOK, "overview", &page{Title: "Overview", Nav: "overview", S: s, Message: notice(r), Data: d})
}

type budgetsData struct {
	List       budgetList
	Q          string
	First      bool
	PrevBefore string
	NextAfter  string
	End        string // a "before" past every id: the last page
}

// endOfList is a budget id cursor after every budget (the API's largest "before").
const endOfList = "4611686018427387904"

const listPage = "50"

func (c *Console) budgets(w http.ResponseWriter, r *http.Request, s *session) {
	if s.IsKey() {
		http.Redirect(w, r, Path, http.StatusSeeOther)
		return
	}
	in := r.URL.Query()
	q := url.Values{"current": {"true"}, "limit": {listPage}}
	for _, k := range []string{"q", "after", "before"} {
		if v := in.Get(k); v != "" {
			q.Set(k, v)
		}
	}
	var d budgetsData
	if err := c.get(r.Context(), s.p, "/v1/budgets", q, &d.List); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Q, d.End = in.Get("q"), endOfList
	d.First = in.Get("after") == "" && in.Get("before") == ""
	if d.List.PrevBefore != nil {
		d.PrevBefore = strconv.FormatInt(*d.List.PrevBefore, 10)
	}
	if d.List.NextAfter != nil {
		d.NextAfter = strconv.FormatInt(*d.List.NextAfter, 10)
	}
	c.render(w, r, http.StatusOK, "budgets", &page{Title: "Budgets", Nav: "budgets", S: s, Message: notice(r), Data: d})
}

type budgetData struct {
	History   admin.History
	Budget    admin.Budget
	Window    *admin.Window
	Chart     template.HTML
	Points    []pointRow
	Requests  []admin.Request
	CanChange bool
}

type pointRow struct {
	At     time.Time
	Amount string
	Total  string
}

func (c *Console) budget(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		c.renderError(w, r, s, http.StatusNotFound, "No such budget.")
		return
	}
	hpath, rpath := "/v1/budgets/"+id+"/history", "/v1/requests"
	if s.IsKey() {
		hpath, rpath = "/v1/me/budgets/"+id+"/history", "/v1/me/requests"
	}
	var d budgetData
	if err := c.get(r.Context(), s.p, hpath, nil, &d.History); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Budget, d.Window = d.History.Budget, d.History.Budget.Current
	d.Chart = budgetChart(d.History, c.cfg.Now())
	var cum int64
	for _, p := range d.History.Points {
		cum += amountOf(d.Budget.Unit, p.Amount)
		d.Points = append(d.Points, pointRow{At: p.At, Amount: p.Amount, Total: admin.FormatAmount(unitOf(d.Budget.Unit), cum)})
	}
	var reqs struct {
		Requests []admin.Request `json:"requests"`
	}
	if err := c.get(r.Context(), s.p, rpath, url.Values{"subject": {d.Budget.Subject}, "limit": {"20"}}, &reqs); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d.Requests = reqs.Requests
	// A manager may change only budgets a manager set (the API refuses the others anyway).
	d.CanChange = s.IsAdmin() || (s.CanChange() && d.Budget.SetBy == "manager")
	c.render(w, r, http.StatusOK, "budget", &page{Title: d.Budget.Name, Nav: "budgets", S: s, Message: notice(r), Data: d})
}

// budgetFormData fills the create/edit form.
type budgetFormData struct {
	ID                                           string
	Name, Subject, Unit, Limit, Window, Timezone string
	Hard                                         bool
	WarnAt, Models                               string
}

func (c *Console) budgetForm(w http.ResponseWriter, r *http.Request, s *session) {
	f := budgetFormData{Unit: "usd", Window: "month", Timezone: "UTC", Hard: true, Subject: r.URL.Query().Get("subject")}
	title := "New budget"
	if id := r.PathValue("id"); id != "" {
		var b admin.Budget
		if err := c.get(r.Context(), s.p, "/v1/budgets/"+url.PathEscape(id), nil, &b); err != nil {
			c.fail(w, r, s, err)
			return
		}
		f = budgetFormData{ID: id, Name: b.Name, Subject: b.Subject, Unit: b.Unit, Limit: b.Limit, Window: b.Window,
			Timezone: b.Timezone, Hard: b.Hard, Models: strings.Join(b.Models, ", ")}
		var warn []string
		for _, v := range b.WarnAt {
			warn = append(warn, strconv.Itoa(v))
		}
		f.WarnAt = strings.Join(warn, ", ")
		title = "Edit " + b.Name
	}
	c.render(w, r, http.StatusOK, "budget_form", &page{Title: title, Nav: "budgets", S: s, Data: f})
}

func (c *Console) saveBudget(w http.ResponseWriter, r *http.Request, s *session) {
	pf := r.PostForm
	f := budgetFormData{ID: r.PathValue("id"), Name: pf.Get("name"), Subject: pf.Get("subject"), Unit: pf.Get("unit"),
		Limit: pf.Get("limit"), Window: pf.Get("window"), Timezone: pf.Get("timezone"), Hard: pf.Get("hard") == "on",
		WarnAt: pf.Get("warn_at"), Models: pf.Get("models")}
	body := map[string]any{"name": f.Name, "unit": f.Unit, "limit": f.Limit, "window": f.Window, "timezone": f.Timezone,
		"hard": f.Hard, "models": splitList(f.Models)}
	warn := []int{}
	for _, v := range splitList(f.WarnAt) {
		n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
		if err != nil {
			c.render(w, r, http.StatusBadRequest, "budget_form", &page{Title: "Budget", Nav: "budgets", S: s,
				Error: fmt.Sprintf("Warn at: %q is not a whole percentage.", v), Data: f})
			return
		}
		warn = append(warn, n)
	}
	body["warn_at"] = warn
	var out admin.Budget
	var err error
	if f.ID == "" {
		body["subject"] = f.Subject
		err = c.call(r.Context(), s.p, "POST", "/v1/budgets", nil, body, &out)
	} else {
		err = c.call(r.Context(), s.p, "PATCH", "/v1/budgets/"+url.PathEscape(f.ID), nil, body, &out)
	}
	if ae, ok := err.(*apiError); ok {
		c.render(w, r, ae.Status, "budget_form", &page{Title: "Budget", Nav: "budgets", S: s, Error: ae.Message, Data: f})
		return
	}
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/ui/budgets/%d?m=saved", out.ID), http.StatusSeeOther)
}

func (c *Console) deleteBudget(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.call(r.Context(), s.p, "DELETE", "/v1/budgets/"+url.PathEscape(r.PathValue("id")), nil, nil, nil); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/ui/budgets?m=deleted", http.StatusSeeOther)
}

func (c *Console) addGrant(w http.ResponseWriter, r *http.Request, s *session) {
	id := url.PathEscape(r.PathValue("id"))
	hours, err := strconv.Atoi(r.PostForm.Get("hours"))
	if err != nil || hours < 1 || hours > 24*400 {
		c.renderError(w, r, s, http.StatusBadRequest, "Grant: the duration must be 1 to 9600 hours.")
		return
	}
	body := map[string]any{"amount": r.PostForm.Get("amount"), "reason": r.PostForm.Get("reason"),
		"expires_at": c.cfg.Now().Add(time.Duration(hours) * time.Hour).UTC()}
	if err := c.call(r.Context(), s.p, "POST", "/v1/budgets/"+id+"/grants", nil, body, nil); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/ui/budgets/"+id+"?m=granted", http.StatusSeeOther)
}

type spendData struct {
	Report                         spendReport
	GroupBy, From, To, Subject     string
	Chart                          template.HTML
	CSV                            string
	GroupLabel                     string
	SubjectRequired                bool
	SubjectChoices                 []string
	Groups                         []string
	CostColumn, TokensColumn, Reqs string
}

// spendQuery is the spend explorer's query from its form (dates are whole UTC days).
func (c *Console) spendQuery(r *http.Request, s *session) (url.Values, spendData) {
	in := r.URL.Query()
	now := c.cfg.Now().UTC()
	d := spendData{GroupBy: in.Get("group_by"), From: in.Get("from"), To: in.Get("to"), Subject: strings.TrimSpace(in.Get("subject")),
		Groups: []string{"day", "subject", "model", "key"}}
	if d.GroupBy == "" {
		d.GroupBy = "day"
	}
	if d.From == "" {
		d.From = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).Format(time.DateOnly)
	}
	if d.To == "" {
		d.To = now.Format(time.DateOnly)
	}
	if !s.ReadsAll() {
		d.SubjectRequired = true
		for _, e := range s.p.Actor.Scope {
			if !strings.HasSuffix(e, "*") {
				d.SubjectChoices = append(d.SubjectChoices, e)
			}
		}
		if d.Subject == "" && len(d.SubjectChoices) > 0 {
			d.Subject = d.SubjectChoices[0]
		}
	}
	q := url.Values{"group_by": {d.GroupBy}, "from": {d.From}, "to": {d.To}}
	if d.Subject != "" {
		q.Set("subject", d.Subject)
	}
	return q, d
}

func (c *Console) spend(w http.ResponseWriter, r *http.Request, s *session) {
	if s.IsKey() {
		http.Redirect(w, r, Path, http.StatusSeeOther)
		return
	}
	q, d := c.spendQuery(r, s)
	if err := c.get(r.Context(), s.p, "/v1/spend", q, &d.Report); err != nil {
		if ae, ok := err.(*apiError); ok {
			c.render(w, r, ae.Status, "spend", &page{Title: "Spend", Nav: "spend", S: s, Error: ae.Message, Data: d})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	d.CSV = "/ui/spend.csv?" + q.Encode()
	d.GroupLabel = map[string]string{"day": "Day (UTC)", "subject": "Subject", "model": "Model", "key": "Key"}[d.GroupBy]
	var bars []bar
	for _, x := range d.Report.Rows {
		bars = append(bars, bar{Label: x.Group, Value: amountOf("usd", x.Cost)})
	}
	d.Chart = barChart("spend-chart", "Spend by "+strings.ToLower(d.GroupLabel), "usd", bars, d.GroupBy != "day")
	c.render(w, r, http.StatusOK, "spend", &page{Title: "Spend", Nav: "spend", S: s, Data: d})
}

func (c *Console) spendCSV(w http.ResponseWriter, r *http.Request, s *session) {
	q, _ := c.spendQuery(r, s)
	q.Set("format", "csv")
	c.export(w, r, s.p, "/v1/spend", q)
}

type requestsData struct {
	Requests                             []admin.Request
	NextBefore                           string
	Subject, Key, Model, State, From, To string
	CSV, JSONL                           string
	States                               []string
	First                                bool
}

func (c *Console) requestsQuery(r *http.Request) (url.Values, requestsData) {
	in := r.URL.Query()
	d := requestsData{Subject: in.Get("subject"), Key: in.Get("key"), Model: in.Get("model"), State: in.Get("state"),
		From: in.Get("from"), To: in.Get("to"), States: []string{"pending", "settled", "voided", "expired"}, First: in.Get("before") == ""}
	q := url.Values{}
	for k, v := range map[string]string{"subject": d.Subject, "key": d.Key, "model": d.Model, "state": d.State, "from": d.From, "to": d.To} {
		if v = strings.TrimSpace(v); v != "" {
			q.Set(k, v)
		}
	}
	return q, d
}

func requestsPath(s *session) string {
	if s.IsKey() {
		return "/v1/me/requests"
	}
	return "/v1/requests"
}

func (c *Console) requests(w http.ResponseWriter, r *http.Request, s *session) {
	q, d := c.requestsQuery(r)
	d.CSV, d.JSONL = "/ui/requests.csv?"+q.Encode(), "/ui/requests.jsonl?"+q.Encode()
	q.Set("limit", listPage)
	if b := r.URL.Query().Get("before"); b != "" {
		q.Set("before", b)
	}
	var out struct {
		Requests   []admin.Request `json:"requests"`
		NextBefore *string         `json:"next_before"`
	}
	if err := c.get(r.Context(), s.p, requestsPath(s), q, &out); err != nil {
		if ae, ok := err.(*apiError); ok {
			c.render(w, r, ae.Status, "requests", &page{Title: "Requests", Nav: "requests", S: s, Error: ae.Message, Data: d})
			return
		}
		c.fail(w, r, s, err)
		return
	}
	d.Requests = out.Requests
	if out.NextBefore != nil {
		q.Del("limit")
		q.Set("before", *out.NextBefore)
		d.NextBefore = "/ui/requests?" + q.Encode()
	}
	c.render(w, r, http.StatusOK, "requests", &page{Title: "Requests", Nav: "requests", S: s, Data: d})
}

func (c *Console) requestsExport(w http.ResponseWriter, r *http.Request, s *session) {
	q, _ := c.requestsQuery(r)
	q.Set("format", strings.TrimPrefix(r.URL.Path[strings.LastIndexByte(r.URL.Path, '.'):], "."))
	c.export(w, r, s.p, requestsPath(s), q)
}

type keysData struct {
	Keys         []admin.Key
	Name, Subj   string
	NextAfter    string
	CanChange    bool
	OwnerExample string
}

func (c *Console) keys(w http.ResponseWriter, r *http.Request, s *session) {
	in := r.URL.Query()
	q := url.Values{"limit": {listPage}}
	for _, k := range []string{"name", "subject", "after"} {
		if v := strings.TrimSpace(in.Get(k)); v != "" {
			q.Set(k, v)
		}
	}
	var out struct {
		Keys      []admin.Key `json:"keys"`
		NextAfter *string     `json:"next_after"`
	}
	if err := c.get(r.Context(), s.p, "/v1/keys", q, &out); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := keysData{Keys: out.Keys, Name: in.Get("name"), Subj: in.Get("subject"), CanChange: s.CanChange(), OwnerExample: "team:ml"}
	if len(s.p.Actor.Scope) > 0 {
		d.OwnerExample = strings.TrimSuffix(s.p.Actor.Scope[0], "*")
	}
	if out.NextAfter != nil {
		q.Del("limit")
		q.Set("after", *out.NextAfter)
		d.NextAfter = "/ui/keys?" + q.Encode()
	}
	c.render(w, r, http.StatusOK, "keys", &page{Title: "Keys", Nav: "keys", S: s, Message: notice(r), Data: d})
}

// secretData is the one page that shows a secret: a key or token just created.
type secretData struct {
	Kind, ID, Name, Secret, Back string
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{"name": strings.TrimSpace(r.PostForm.Get("name")), "subjects": splitList(r.PostForm.Get("subjects")),
		"allowed_models": splitList(r.PostForm.Get("models"))}
	var k admin.Key
	if err := c.call(r.Context(), s.p, "POST", "/v1/keys", nil, body, &k); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, http.StatusCreated, "secret", &page{Title: "Key created", Nav: "keys", S: s,
		Data: secretData{Kind: "API key", ID: k.ID, Name: k.Name, Secret: k.Key, Back: "/ui/keys"}})
}

func (c *Console) revokeKey(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.call(r.Context(), s.p, "DELETE", "/v1/keys/"+url.PathEscape(r.PathValue("id")), nil, nil, nil); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/ui/keys?m=revoked", http.StatusSeeOther)
}

func (c *Console) tokens(w http.ResponseWriter, r *http.Request, s *session) {
	var out struct {
		Tokens []admin.Token `json:"tokens"`
	}
	if err := c.get(r.Context(), s.p, "/v1/tokens", url.Values{"limit": {"1000"}}, &out); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, http.StatusOK, "tokens", &page{Title: "Admin tokens", Nav: "tokens", S: s, Message: notice(r), Data: out.Tokens})
}

func (c *Console) createToken(w http.ResponseWriter, r *http.Request, s *session) {
	body := map[string]any{"name": strings.TrimSpace(r.PostForm.Get("name")), "role": r.PostForm.Get("role"),
		"scope": splitList(r.PostForm.Get("scope"))}
	var t admin.Token
	if err := c.call(r.Context(), s.p, "POST", "/v1/tokens", nil, body, &t); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.render(w, r, http.StatusCreated, "secret", &page{Title: "Token created", Nav: "tokens", S: s,
		Data: secretData{Kind: t.Role + " token", ID: t.ID, Name: t.Name, Secret: t.Token, Back: "/ui/tokens"}})
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.call(r.Context(), s.p, "DELETE", "/v1/tokens/"+url.PathEscape(r.PathValue("id")), nil, nil, nil); err != nil {
		c.fail(w, r, s, err)
		return
	}
	http.Redirect(w, r, "/ui/tokens?m=revoked", http.StatusSeeOther)
}

type auditData struct {
	Entries    []auditRow
	NextBefore string
	Target     string
}

// auditRow is an audit entry with its details written for people (amounts in their unit).
type auditRow struct {
	admin.AuditEntry
	Text string
}

func (c *Console) audit(w http.ResponseWriter, r *http.Request, s *session) {
	in := r.URL.Query()
	q := url.Values{"limit": {listPage}}
	for _, k := range []string{"before", "target"} {
		if v := strings.TrimSpace(in.Get(k)); v != "" {
			q.Set(k, v)
		}
	}
	var out struct {
		Entries    []admin.AuditEntry `json:"entries"`
		NextBefore *int64             `json:"next_before"`
	}
	if err := c.get(r.Context(), s.p, "/v1/audit", q, &out); err != nil {
		c.fail(w, r, s, err)
		return
	}
	d := auditData{Entries: make([]auditRow, len(out.Entries)), Target: in.Get("target")}
	units := map[string]string{} // one lookup per budget named on the page
	unitOf := func(target string) string {
		if u, ok := units[target]; ok {
			return u
		}
		var b admin.Budget
		if id, ok := strings.CutPrefix(target, "budget:"); ok {
			// A budget that is gone (or not visible to this principal) leaves its amounts raw,
			// said to be raw.
			_ = c.get(r.Context(), s.p, "/v1/budgets/"+url.PathEscape(id), nil, &b)
		}
		units[target] = b.Unit
		return b.Unit
	}
	for i, e := range out.Entries {
		d.Entries[i] = auditRow{AuditEntry: e, Text: e.DetailsText(unitOf)}
	}
	if out.NextBefore != nil {
		q.Del("limit")
		q.Set("before", strconv.FormatInt(*out.NextBefore, 10))
		d.NextBefore = "/ui/audit?" + q.Encode()
	}
	c.render(w, r, http.StatusOK, "audit", &page{Title: "Audit log", Nav: "audit", S: s, Data: d})
}
