package alerts

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Payload is the generic JSON body of an alert (FormatJSON webhooks). Amounts are decimal
// strings in the budget's unit.
type Payload struct {
	ID          string        `json:"id"`   // the idempotency key, also sent as Idempotency-Key
	Type        string        `json:"type"` // budget.threshold | budget.projected
	CreatedAt   time.Time     `json:"created_at"`
	Budget      PayloadBudget `json:"budget"`
	Window      PayloadWindow `json:"window"`
	Limit       string        `json:"limit"` // grants included
	Used        string        `json:"used"`  // posted + pending
	Posted      string        `json:"posted"`
	Pending     string        `json:"pending"`
	Utilization int           `json:"utilization"`
	Threshold   int           `json:"threshold"` // percent of the limit (100 for projected)
	Projected   string        `json:"projected"` // spend at the window's end at the current rate
	RunsOutAt   *time.Time    `json:"runs_out_at"`
}

// PayloadBudget identifies the budget.
type PayloadBudget struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Subject string `json:"subject"`
	Unit    string `json:"unit"`
	Hard    bool   `json:"hard"`
}

// PayloadWindow is the span the alert is raised once in.
type PayloadWindow struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

func newPayload(key, kind string, threshold int, st budget.Status, start, end, now time.Time) Payload {
	u := st.Budget.Unit
	p := Payload{
		ID: key, Type: "budget." + kind, CreatedAt: now.UTC(),
		Budget: PayloadBudget{ID: st.Budget.ID, Name: st.Budget.Name, Subject: string(st.Budget.Subject), Unit: string(u), Hard: st.Budget.Hard},
		Window: PayloadWindow{Start: start.UTC(), End: end.UTC()},
		Limit:  u.Format(st.Limit), Used: u.Format(st.Posted + st.Pending), Posted: u.Format(st.Posted),
		Pending: u.Format(st.Pending), Utilization: st.Utilization, Threshold: threshold, Projected: u.Format(st.Projected),
	}
	if st.UntilExhausted > 0 {
		t := now.Add(st.UntilExhausted).UTC().Truncate(time.Second)
		p.RunsOutAt = &t
	}
	return p
}

// display is an amount for people: "$81.20", "$0.00015", "150000 tokens".
func display(unit, v string) string {
	if unit == string(budget.Tokens) || unit == string(budget.Requests) {
		return v + " " + unit
	}
	whole, frac, _ := strings.Cut(v, ".")
	frac = strings.TrimRight(frac, "0")
	for len(frac) < 2 {
		frac += "0"
	}
	return "$" + whole + "." + frac
}

// slackText renders a payload for a Slack incoming webhook.
func slackText(p Payload) string {
	name := fmt.Sprintf("%q (%s)", p.Budget.Name, p.Budget.Subject)
	span := fmt.Sprintf("%s → %s UTC", p.Window.Start.Format("2006-01-02 15:04"), p.Window.End.Format("2006-01-02 15:04"))
	used, limit := display(p.Budget.Unit, p.Used), display(p.Budget.Unit, p.Limit)
	kind := "hard"
	if !p.Budget.Hard {
		kind = "soft"
	}
	switch p.Type {
	case "budget.projected":
		s := fmt.Sprintf(":chart_with_upwards_trend: purser: %s budget %s is projected to run out before its window ends: %s of %s used, %s projected by the end of %s.",
			kind, name, used, limit, display(p.Budget.Unit, p.Projected), span)
		if p.RunsOutAt != nil {
			s += " At this rate it runs out around " + p.RunsOutAt.Format("2006-01-02 15:04") + " UTC."
		}
		return s
	}
	return fmt.Sprintf(":warning: purser: %s budget %s reached %d%% of its limit: %s of %s used in %s.",
		kind, name, p.Threshold, used, limit, span)
}

// render builds the body a webhook receives for an event.
func render(w Webhook, payload []byte) ([]byte, error) {
	if w.Format != FormatSlack {
		return payload, nil
	}
	var kind struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(payload, &kind); err != nil {
		return nil, fmt.Errorf("stored alert payload: %w", err)
	}
	if kind.Type == "usage.missing" {
		var u UsagePayload
		if err := json.Unmarshal(payload, &u); err != nil {
			return nil, fmt.Errorf("stored alert payload: %w", err)
		}
		return json.Marshal(map[string]string{"text": fmt.Sprintf(
			":rotating_light: purser: %d%% of the %d requests on route %q (%s %s) since %s UTC were charged their whole hold because their usage never arrived. %s",
			u.MissingPercent, u.Resolved, u.Route, u.Provider, u.Model, u.Window.Start.Format("2006-01-02 15:04"), u.Hint)})
	}
	var p Payload
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("stored alert payload: %w", err)
	}
	return json.Marshal(map[string]string{"text": slackText(p)})
}
