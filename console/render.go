package console

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
)

// page is what every template gets.
type page struct {
	Title   string
	Nav     string   // the active navigation entry
	S       *session // nil before sign-in
	CSRF    string
	Message string // a notice (announced politely)
	Error   string // an error (announced at once)
	Data    any
}

var funcs = template.FuncMap{
	"amt":     displayAmount,
	"when":    displayTime,
	"day":     func(t time.Time) string { return t.UTC().Format("2006-01-02") },
	"join":    func(ss []string) string { return strings.Join(ss, ", ") },
	"deref":   func(s *string) string { return derefOr(s, "") },
	"orDash":  func(s string) string { return cmpOr(s, "—") },
	"pct":     func(v int) string { return strconv.Itoa(v) + "%" },
	"capped":  func(v int) int { return min(max(v, 0), 100) },
	"derefOr": derefOr,
	"days": func(v *float64) string {
		if v == nil {
			return "—"
		}
		return strconv.FormatFloat(*v, 'f', 1, 64) + " days"
	},
	"whenp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return displayTime(*t)
	},
}

func derefOr(s *string, def string) string {
	if s == nil || *s == "" {
		return def
	}
	return *s
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// parsePages parses every page with the layout: each page file defines "content".
func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("console templates: %w", err)
	}
	names, err := fs.Glob(templateFiles, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(path.Base(n), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFiles, n)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", n, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render writes a page; a template error becomes a plain 500 (and is logged).
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	t, ok := c.pages[name]
	if !ok {
		c.log.LogAttrs(r.Context(), slog.LevelError, "console: no template", slog.String("page", name))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if p.S != nil && p.CSRF == "" {
		p.CSRF = p.S.csrf
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout.html", p); err != nil {
		c.log.LogAttrs(r.Context(), slog.LevelError, "console: render", slog.String("page", name), slog.String("error", err.Error()))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (c *Console) renderError(w http.ResponseWriter, r *http.Request, s *session, status int, msg string) {
	c.render(w, r, status, "error", &page{Title: http.StatusText(status), S: s, Error: msg})
}

// fail renders an API error as a page with its status; other errors are logged.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	if ae, ok := err.(*apiError); ok {
		c.renderError(w, r, s, ae.Status, ae.Message)
		return
	}
	c.log.LogAttrs(r.Context(), slog.LevelError, "console", slog.String("path", r.URL.Path), slog.String("error", err.Error()))
	c.renderError(w, r, s, http.StatusInternalServerError, "Internal error (logged).")
}

// displayAmount writes an API amount (a decimal string) for people: "$12.50", "$0.00015",
// "1,234,567 tokens", "600 requests".
func displayAmount(unit, v string) string {
	neg := strings.HasPrefix(v, "-")
	v = strings.TrimPrefix(v, "-")
	sign := ""
	if neg {
		sign = "−"
	}
	switch unit {
	case "tokens", "requests":
		return sign + thousands(v) + " " + unit
	}
	whole, frac, _ := strings.Cut(v, ".")
	if whole != "0" && whole != "" && len(frac) > 2 {
		// A dollar or more reads in cents, rounded half up (display only: the API, CSV and
		// the tables behind the charts keep every micro-dollar).
		micros, err := strconv.ParseInt(whole+(frac + "000000")[:6], 10, 64)
		if err == nil {
			cents := (micros + 5_000) / 10_000
			whole, frac = strconv.FormatInt(cents/100, 10), fmt.Sprintf("%02d", cents%100)
		}
	}
	frac = strings.TrimRight(frac, "0")
	for len(frac) < 2 {
		frac += "0"
	}
	return sign + "$" + thousands(whole) + "." + frac
}

// thousands groups the digits of a whole number.
func thousands(s string) string {
	if len(s) <= 3 {
		return s
	}
	var b strings.Builder
	lead := len(s) % 3
	if lead > 0 {
		b.WriteString(s[:lead])
	}
	for i := lead; i < len(s); i += 3 {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

func displayTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}
