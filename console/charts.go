package console

import (
	"fmt"
	"html"
	"html/template"
	"math"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

// Charts are inline SVG drawn here: no script, no external file, readable without JavaScript,
// and each has a title, a text description and (in the page) the same numbers as a table.
// Coordinates are floats; amounts are the API's exact decimal strings, parsed to integers.

const (
	chartW, chartH         = 760, 280
	padL, padR, padT, padB = 84, 16, 16, 36
	plotW, plotH           = chartW - padL - padR, chartH - padT - padB
)

// amountOf parses an API amount of unit (0 when unparsable: a display, never a ledger figure).
func amountOf(unit, s string) int64 {
	v, err := admin.ParseAmount(budget.Unit(unit), strings.TrimPrefix(s, "-"))
	if err != nil {
		return 0
	}
	if strings.HasPrefix(s, "-") {
		return -v
	}
	return v
}

// shortAmount labels an axis: "$1.2k", "$35", "$0.50", "12k tokens".
func shortAmount(unit string, v int64) string {
	f := float64(v)
	prefix, suffix := "", ""
	if unit == "usd" || unit == "" {
		f /= 1e6
		prefix = "$"
	} else {
		suffix = " " + map[string]string{"tokens": "tok", "requests": "req"}[unit]
	}
	var s string
	switch a := math.Abs(f); {
	case a >= 1e9:
		s = trimFloat(f/1e9, 1) + "G"
	case a >= 1e6:
		s = trimFloat(f/1e6, 1) + "M"
	case a >= 1e3:
		s = trimFloat(f/1e3, 1) + "k"
	case a >= 10 || unit == "tokens" || unit == "requests":
		s = trimFloat(f, 0)
	case a == 0:
		s = "0"
	default:
		s = trimFloat(f, 2)
	}
	return prefix + s + suffix
}

func trimFloat(f float64, prec int) string {
	s := fmt.Sprintf("%.*f", prec, f)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// niceAxis picks a y axis for values up to v: a round step (1, 2, 2.5 or 5 times a power
// of ten) giving about four ticks, and the top, a whole number of steps (190 → 200 in steps
// of 50; 1083 → 1500 in steps of 500).
func niceAxis(v float64) (top float64, ticks int) {
	if v <= 0 {
		return 4, 4
	}
	raw := v / 4
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * p
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*p >= raw {
			step = m * p
			break
		}
	}
	ticks = int(math.Ceil(v/step - 1e-9))
	return step * float64(ticks), ticks
}

type svg struct{ b strings.Builder }

func (s *svg) f(format string, args ...any) { fmt.Fprintf(&s.b, format, args...) }
func (s *svg) text(x, y float64, anchor, class, text string) {
	s.f(`<text x="%.1f" y="%.1f" text-anchor="%s" class="%s">%s</text>`, x, y, anchor, class, html.EscapeString(text))
}

func (s *svg) open(id, title, desc string) {
	s.f(`<svg class="chart" viewBox="0 0 %d %d" role="img" aria-labelledby="%s-t %s-d" xmlns="http://www.w3.org/2000/svg">`,
		chartW, chartH, id, id)
	s.f(`<title id="%s-t">%s</title><desc id="%s-d">%s</desc>`, id, html.EscapeString(title), id, html.EscapeString(desc))
}

// yAxis draws horizontal grid lines and labels up to top, at ticks steps.
func (s *svg) yAxis(unit string, top float64, ticks int) {
	for i := 0; i <= ticks; i++ {
		v := top * float64(i) / float64(ticks)
		y := padT + plotH - plotH*float64(i)/float64(ticks)
		s.f(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="grid"/>`, padL, y, chartW-padR, y)
		s.text(padL-8, y+4, "end", "axis", shortAmount(unit, int64(v)))
	}
}

// budgetChart draws a budget's window: cumulative settled spend, what is used now (pending
// included), the projection to the window's end at the current burn rate, and the limit.
func budgetChart(h admin.History, now time.Time) template.HTML {
	b, w := h.Budget, h.Budget.Current
	if w == nil {
		return ""
	}
	start := w.WindowStart
	end := now
	if w.WindowEnd != nil {
		end = *w.WindowEnd
	}
	if !end.After(start) {
		end = start.Add(time.Hour)
	}
	if now.After(end) {
		now = end
	}
	limit := amountOf(b.Unit, w.Limit)
	used := amountOf(b.Unit, w.Posted) + amountOf(b.Unit, w.Pending)
	projected := amountOf(b.Unit, w.Projected)
	showProjection := w.WindowEnd != nil && projected > used // rolling and lifetime windows project what is used
	bucket := time.Duration(h.BucketSeconds) * time.Second

	// Cumulative settled spend at the end of each bucket.
	type pt struct {
		t time.Time
		v int64
	}
	series := []pt{{start, 0}}
	var cum int64
	for _, p := range h.Points {
		cum += amountOf(b.Unit, p.Amount)
		t := p.At.Add(bucket)
		if t.After(now) {
			t = now
		}
		series = append(series, pt{t, cum})
	}
	top := float64(max(limit, used, cum))
	if showProjection {
		top = max(top, float64(projected))
	}
	top, ticks := niceAxis(top * 1.05)
	x := func(t time.Time) float64 {
		return padL + plotW*float64(t.Sub(start))/float64(end.Sub(start))
	}
	y := func(v int64) float64 { return padT + plotH - plotH*float64(v)/top }

	desc := fmt.Sprintf("Used %s of %s (%d%%) between %s and %s.", displayAmount(b.Unit, w.Posted), displayAmount(b.Unit, w.Limit),
		w.Utilization, displayTime(start), displayTime(end))
	if showProjection {
		desc += fmt.Sprintf(" At the current burn rate, %s by the window's end.", displayAmount(b.Unit, w.Projected))
	}
	var s svg
	s.open("budget-chart", "Spend over the current window of "+b.Name, desc)
	s.yAxis(b.Unit, top, ticks)
	// X axis: start, middle, end.
	layout := "Jan 2"
	if end.Sub(start) <= 48*time.Hour {
		layout = "15:04"
	}
	for i, t := range []time.Time{start, start.Add(end.Sub(start) / 2), end} {
		anchor := []string{"start", "middle", "end"}[i]
		s.text(x(t), chartH-12, anchor, "axis", t.UTC().Format(layout))
	}
	// The limit.
	if limit > 0 {
		s.f(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="limit"/>`, padL, y(limit), chartW-padR, y(limit))
		s.text(chartW-padR-4, y(limit)-6, "end", "limit-label", "limit "+shortAmount(b.Unit, limit))
	}
	// Settled spend (a step line), then the jump to what is used now (pending holds).
	var path strings.Builder
	for i, p := range series {
		if i == 0 {
			fmt.Fprintf(&path, "M%.1f %.1f", x(p.t), y(p.v))
			continue
		}
		fmt.Fprintf(&path, " H%.1f V%.1f", x(p.t), y(p.v))
	}
	fmt.Fprintf(&path, " H%.1f V%.1f", x(now), y(used))
	s.f(`<path d="%s" class="spend"/>`, path.String())
	s.f(`<circle cx="%.1f" cy="%.1f" r="4" class="now"/>`, x(now), y(used))
	if showProjection {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="projection"/>`, x(now), y(used), x(end), y(projected))
		s.text(x(end)-4, y(projected)+16, "end", "projection-label", "projected "+shortAmount(b.Unit, projected))
	}
	s.f(`</svg>`)
	return template.HTML(s.b.String())
}

// bar is one bar of a bar chart.
type bar struct {
	Label string
	Value int64
}

// barChart draws vertical bars (time series, labels thinned) or, with horizontal, a ranked
// list of labelled bars.
func barChart(id, title, unit string, bars []bar, horizontal bool) template.HTML {
	if len(bars) == 0 {
		return ""
	}
	var peak int64
	for _, b := range bars {
		peak = max(peak, b.Value)
	}
	top, ticks := niceAxis(float64(peak) * 1.05)
	var s svg
	desc := fmt.Sprintf("%d bars; the largest is %s.", len(bars), shortAmount(unit, peak))
	if horizontal {
		rows := min(len(bars), 15)
		h := padT + 22*rows + 8
		s.f(`<svg class="chart" viewBox="0 0 %d %d" role="img" aria-labelledby="%s-t %s-d" xmlns="http://www.w3.org/2000/svg">`,
			chartW, h, id, id)
		s.f(`<title id="%s-t">%s</title><desc id="%s-d">%s</desc>`, id, html.EscapeString(title), id, html.EscapeString(desc))
		const labelW = 240
		for i, b := range bars[:rows] {
			yy := float64(padT + 22*i)
			wdt := (chartW - labelW - 90) * float64(b.Value) / top
			label := b.Label
			if r := []rune(label); len(r) > 34 {
				label = string(r[:33]) + "…"
			}
			s.text(labelW-8, yy+14, "end", "axis", cmpOr(label, "(none)"))
			s.f(`<rect x="%d" y="%.1f" width="%.1f" height="16" class="bar"/>`, labelW, yy+2, math.Max(wdt, 1))
			s.text(labelW+math.Max(wdt, 1)+6, yy+14, "start", "axis", shortAmount(unit, b.Value))
		}
		s.f(`</svg>`)
		return template.HTML(s.b.String())
	}
	s.open(id, title, desc)
	s.yAxis(unit, top, ticks)
	slot := float64(plotW) / float64(len(bars))
	every := max(1, len(bars)/8)
	for i, b := range bars {
		hgt := plotH * float64(b.Value) / top
		s.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" class="bar"><title>%s: %s</title></rect>`,
			padL+slot*float64(i)+slot*0.15, padT+plotH-hgt, slot*0.7, math.Max(hgt, 0.5),
			html.EscapeString(b.Label), html.EscapeString(shortAmount(unit, b.Value)))
		if i%every == 0 {
			s.text(padL+slot*(float64(i)+0.5), chartH-12, "middle", "axis", b.Label)
		}
	}
	s.f(`</svg>`)
	return template.HTML(s.b.String())
}

func unitOf(u string) budget.Unit { return budget.Unit(u) }
