// Package console is purser's web console, served under /ui/ on the HTTP listener: an overview
// (budgets nearest exhaustion, spend today and this month, alerts), budget pages with a
// spend-over-time chart, a spend explorer, per-request records, keys, budgets and admin tokens
// management, and the audit log. A key holder signs in with its own key and sees only its own
// budgets and requests.
//
// Pages are rendered on the server with html/template from files embedded in the binary, with
// one small stylesheet, one small script (confirmations, progressive only) and charts drawn as
// inline SVG: nothing is fetched from elsewhere and there is no build step. Every read and
// change is an admin API request served in process as the signed-in principal (see api.go).
//
// Sign-in takes an admin token or a purser API key in a POST form; the session is a random
// secret in an HttpOnly, SameSite=Strict cookie scoped to /ui/ (Secure over TLS), stored only
// as a SHA-256 in Postgres so every replica knows it, and re-checked against the token or key
// on every request. Every form carries a CSRF token derived from the session. No secret ever
// appears in a URL; the only secret a page shows is a key or token just created or rotated,
// once, in the answer to the POST that made it.
package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
	"github.com/purser-dev/purser/budget"
)

// Sessions stores console sign-ins (*budget.Service).
type Sessions interface {
	CreateSession(ctx context.Context, actor, principal string) (string, time.Time, error)
	Session(ctx context.Context, secret string) (string, time.Time, error)
	DeleteSession(ctx context.Context, secret string) error
}

// Config tunes the console. The zero value means "use the defaults".
type Config struct {
	// Logger receives internal errors (never secrets). Default: discard.
	Logger *slog.Logger
	// Now is the clock for default date ranges (default time.Now).
	Now func() time.Time
}

// Path is where the console is mounted.
const Path = "/ui/"

const (
	sessionCookie = "purser_session"
	signinCookie  = "purser_signin" // the sign-in form's CSRF token (double submit)
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Console is the web console's http.Handler.
type Console struct {
	api      *admin.API
	sessions Sessions
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	pages    map[string]*template.Template
}

// New returns the console; mount it at Path.
func New(api *admin.API, sessions Sessions, cfg Config) (*Console, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Console{api: api, sessions: sessions, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		return nil, err
	}
	c.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", cacheStatic(http.FileServerFS(static))))
	c.mux.HandleFunc("GET /ui/signin", c.signinPage)
	c.mux.HandleFunc("POST /ui/signin", c.signin)
	for pattern, h := range map[string]handler{
		"POST /ui/signout":             c.signout,
		"GET /ui/{$}":                  c.overview,
		"GET /ui/budgets":              c.budgets,
		"GET /ui/budgets/new":          c.budgetForm,
		"POST /ui/budgets":             c.saveBudget,
		"GET /ui/budgets/{id}":         c.budget,
		"GET /ui/budgets/{id}/edit":    c.budgetForm,
		"POST /ui/budgets/{id}":        c.saveBudget,
		"POST /ui/budgets/{id}/delete": c.deleteBudget,
		"POST /ui/budgets/{id}/grants": c.addGrant,
		"GET /ui/spend":                c.spend,
		"GET /ui/spend.csv":            c.spendCSV,
		"GET /ui/requests":             c.requests,
		"GET /ui/requests.csv":         c.requestsExport,
		"GET /ui/requests.jsonl":       c.requestsExport,
		"GET /ui/keys":                 c.keys,
		"POST /ui/keys":                c.createKey,
		"POST /ui/keys/{id}/revoke":    c.revokeKey,
		"GET /ui/tokens":               c.tokens,
		"POST /ui/tokens":              c.createToken,
		"POST /ui/tokens/{id}/revoke":  c.revokeToken,
		"GET /ui/audit":                c.audit,
	} {
		c.mux.Handle(pattern, c.authed(h))
	}
	return c, nil
}

// handler is a page handler of a signed-in request.
type handler func(w http.ResponseWriter, r *http.Request, s *session)

// session is the signed-in principal of a request and its CSRF token.
type session struct {
	p    *admin.Principal
	csrf string
}

// IsAdmin: an admin credential with the admin role.
func (s *session) IsAdmin() bool { return s.p.Key == nil && s.p.Actor.Role == budget.RoleAdmin }

// IsKey: a key holder.
func (s *session) IsKey() bool { return s.p.Key != nil }

// CanChange: the role may change keys and budgets (the API still decides each change).
func (s *session) CanChange() bool {
	return s.p.Key == nil && (s.p.Actor.Role == budget.RoleAdmin || s.p.Actor.Role == budget.RoleManager)
}

// ReadsAll: the role reads unscoped reports (audit, every subject's spend).
func (s *session) ReadsAll() bool {
	return s.p.Key == nil && (s.p.Actor.Role == budget.RoleAdmin || s.p.Actor.Role == budget.RoleViewer)
}

// Name and Role describe who is signed in.
func (s *session) Name() string { return s.p.Name }
func (s *session) Role() string { return s.p.Role() }

// Scope is a manager's scope, for display.
func (s *session) Scope() []string { return s.p.Actor.Scope }

// ServeHTTP serves the console with its security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Everything is served from here: no inline script, no inline style, no framing.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin: our own form posts carry their Origin (no-referrer would make it "null");
	// nothing leaks to other sites, and no URL holds a secret anyway.
	h.Set("Referrer-Policy", "same-origin")
	if r.URL.Path == "/ui" {
		http.Redirect(w, r, Path, http.StatusMovedPermanently)
		return
	}
	c.mux.ServeHTTP(w, r)
}

func cacheStatic(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// authed resolves the session of a request (or sends it to sign in) and checks the CSRF token
// and origin of every POST.
func (c *Console) authed(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		s, err := c.session(r)
		if err != nil {
			if !errors.Is(err, errNoSession) {
				c.log.LogAttrs(r.Context(), slog.LevelError, "console session", slog.String("error", err.Error()))
				c.renderError(w, r, nil, http.StatusServiceUnavailable, "The ledger database is unavailable; try again.")
				return
			}
			clearCookie(w, r, sessionCookie)
			target := "/ui/signin"
			if r.Method == http.MethodGet && r.URL.Path != Path {
				target += "?next=" + url.QueryEscape(r.URL.RequestURI())
			}
			http.Redirect(w, r, target, http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
			if !sameOrigin(r) || r.ParseForm() != nil ||
				subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.csrf)) != 1 {
				c.renderError(w, r, s, http.StatusForbidden, "This form expired or did not come from this console. Reload the page and try again.")
				return
			}
		}
		h(w, r, s)
	})
}

var errNoSession = errors.New("no session")

func (c *Console) session(r *http.Request) (*session, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" || len(ck.Value) > 128 {
		return nil, errNoSession
	}
	ref, _, err := c.sessions.Session(r.Context(), ck.Value)
	if errors.Is(err, budget.ErrNotFound) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, err
	}
	p, err := c.api.Principal(r.Context(), ref)
	if errors.Is(err, admin.ErrSignIn) {
		_ = c.sessions.DeleteSession(r.Context(), ck.Value)
		return nil, errNoSession
	}
	if err != nil {
		return nil, err
	}
	return &session{p: p, csrf: csrfToken(ck.Value)}, nil
}

// csrfToken derives a session's CSRF token: unguessable without the HttpOnly cookie.
func csrfToken(sessionSecret string) string {
	m := hmac.New(sha256.New, []byte(sessionSecret))
	m.Write([]byte("purser console csrf"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// sameOrigin refuses cross-site form posts. A browser says where a request comes from in
// Sec-Fetch-Site (same-origin for our own forms); an older one in Origin, which must then be
// this host. A request with neither is no browser's cross-site form (those carry Origin).
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin":
		return true
	case "":
	default:
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}

// secure says whether cookies get the Secure attribute: over TLS, directly or behind a proxy
// that says so.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func setCookie(w http.ResponseWriter, r *http.Request, name, value string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: Path, Expires: expires, HttpOnly: true,
		Secure: secure(r), SameSite: http.SameSiteStrictMode})
}

func clearCookie(w http.ResponseWriter, r *http.Request, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: Path, MaxAge: -1, HttpOnly: true,
		Secure: secure(r), SameSite: http.SameSiteStrictMode})
}

// randomToken returns 256 random bits, base64url.
func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	c.renderSignin(w, r, http.StatusOK, signinMessage(r.URL.Query().Get("m")))
}

func signinMessage(code string) string {
	switch code {
	case "out":
		return "Signed out."
	}
	return ""
}

func (c *Console) renderSignin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	tok, err := randomToken()
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	setCookie(w, r, signinCookie, tok, time.Now().Add(time.Hour))
	next := r.URL.Query().Get("next")
	if r.Method == http.MethodPost {
		next = r.PostForm.Get("next")
	}
	c.render(w, r, status, "signin", &page{Title: "Sign in", CSRF: tok, Message: msg, Data: safeNext(next)})
}

// safeNext keeps a post-sign-in target only when it is a console path on this host.
func safeNext(next string) string {
	if strings.HasPrefix(next, Path) && !strings.HasPrefix(next, "//") && !strings.Contains(next, "\\") {
		return next
	}
	return ""
}

func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if r.ParseForm() != nil {
		c.renderSignin(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	ck, err := r.Cookie(signinCookie)
	if err != nil || !sameOrigin(r) ||
		subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostForm.Get("csrf"))) != 1 {
		c.renderSignin(w, r, http.StatusForbidden, "This form expired; please sign in again.")
		return
	}
	p, err := c.api.SignIn(r.Context(), r.PostForm.Get("credential"))
	if err != nil {
		if errors.Is(err, admin.ErrSignIn) {
			c.renderSignin(w, r, http.StatusUnauthorized, "Sign-in refused: "+err.Error()+".")
			return
		}
		c.log.LogAttrs(r.Context(), slog.LevelError, "console sign-in", slog.String("error", err.Error()))
		c.renderSignin(w, r, http.StatusServiceUnavailable, "The ledger database is unavailable; try again.")
		return
	}
	actor := p.Actor.Name
	if p.Key != nil {
		actor = "key:" + p.Key.ID
	}
	secret, expires, err := c.sessions.CreateSession(r.Context(), actor, p.Ref)
	if err != nil {
		c.log.LogAttrs(r.Context(), slog.LevelError, "console sign-in", slog.String("error", err.Error()))
		c.renderSignin(w, r, http.StatusServiceUnavailable, "The ledger database is unavailable; try again.")
		return
	}
	clearCookie(w, r, signinCookie)
	setCookie(w, r, sessionCookie, secret, expires)
	target := safeNext(r.PostForm.Get("next"))
	if target == "" {
		target = Path
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request, _ *session) {
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if err := c.sessions.DeleteSession(r.Context(), ck.Value); err != nil {
			c.log.LogAttrs(r.Context(), slog.LevelError, "console sign-out", slog.String("error", err.Error()))
		}
	}
	clearCookie(w, r, sessionCookie)
	http.Redirect(w, r, "/ui/signin?m=out", http.StatusSeeOther)
}
