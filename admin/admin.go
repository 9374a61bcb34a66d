// Package admin is purser's HTTP admin API: keys, budgets, default-budget templates, grants,
// resets, admin tokens, status, spend reports, per-request records, the audit log, alerts and
// reconciliation, plus GET /v1/me for API key holders. It speaks JSON (and CSV or JSON lines
// for exports); amounts are decimal strings in the budget's unit ("12.50" USD, "150000"
// tokens, "600" requests) and times are RFC 3339. admin/openapi.yaml describes every route.
//
// Admin routes take `Authorization: Bearer <admin token>`: a bootstrap token from
// PURSER_ADMIN_TOKEN (role admin) or a token created through POST /v1/tokens (role admin,
// manager of some subjects, or viewer). Each route has a rule naming the roles that may call
// it; a manager is further held to its scope. /v1/me takes the caller's own purser API key
// (Authorization: Bearer pk_... or x-api-key) and shows only that key and the budgets of its
// subjects. The two kinds of credential never stand in for each other.
package admin

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Ledger is what the admin API needs of the ledger (*budget.Service).
type Ledger interface {
	CreateKeyAs(ctx context.Context, by budget.Actor, spec budget.KeySpec) (budget.Key, string, error)
	UpdateKeyAs(ctx context.Context, by budget.Actor, id string, spec budget.KeySpec) (budget.Key, error)
	RevokeKeyAs(ctx context.Context, by budget.Actor, id string) (budget.Key, error)
	RotateKeyAs(ctx context.Context, by budget.Actor, id string) (budget.Key, string, error)
	Keys(ctx context.Context, q budget.KeyQuery) ([]budget.Key, error)
	Key(ctx context.Context, id string) (budget.Key, error)
	Authenticate(ctx context.Context, secret string) (*budget.Key, error)

	CreateBudgetAs(ctx context.Context, by budget.Actor, d budget.Definition) (budget.Budget, error)
	UpdateBudgetAs(ctx context.Context, by budget.Actor, id int64, d budget.Definition) (budget.Budget, error)
	DeleteBudgetAs(ctx context.Context, by budget.Actor, id int64) error
	Budget(ctx context.Context, id int64) (budget.Budget, error)
	Budgets(ctx context.Context, q budget.BudgetQuery) ([]budget.Budget, error)
	ResetBudgetAs(ctx context.Context, by budget.Actor, id int64, reason string) (time.Time, error)
	AddGrantAs(ctx context.Context, by budget.Actor, budgetID, amount int64, expiresAt time.Time, reason string) (budget.Grant, error)
	Covers(ctx context.Context, scope budget.Scope, subject budget.Subject) (bool, error)

	CreateTemplate(ctx context.Context, actor string, d budget.Definition) (budget.Budget, error)
	UpdateTemplate(ctx context.Context, actor string, id int64, d budget.Definition) (budget.Budget, error)
	DeleteTemplate(ctx context.Context, actor string, id int64) error
	Templates(ctx context.Context) ([]budget.Template, error)

	CreateToken(ctx context.Context, by budget.Actor, spec budget.TokenSpec) (budget.Token, string, error)
	Tokens(ctx context.Context, q budget.TokenQuery) ([]budget.Token, error)
	Token(ctx context.Context, id string) (budget.Token, error)
	RevokeToken(ctx context.Context, by budget.Actor, id string) (budget.Token, error)
	AuthenticateToken(ctx context.Context, secret string) (*budget.Token, error)

	Status(ctx context.Context, subjects ...budget.Subject) ([]budget.Status, error)
	StatusOf(ctx context.Context, bs []budget.Budget) ([]budget.Status, error)
	TopBudgets(ctx context.Context, scope budget.Scope, n int) ([]budget.Status, error)
	BudgetHistory(ctx context.Context, id int64) (budget.History, error)
	Spend(ctx context.Context, q budget.SpendQuery) ([]budget.SpendRow, error)
	Requests(ctx context.Context, q budget.RequestQuery) ([]budget.RequestRecord, error)
	EachRequest(ctx context.Context, q budget.RequestQuery, fn func(budget.RequestRecord) error) error
	AuditLog(ctx context.Context, target string, before int64, limit int) ([]budget.AuditEntry, error)
	AlertEvents(ctx context.Context, budgetID, before int64, limit int) ([]budget.AlertRecord, error)
	Verify(ctx context.Context) (budget.VerifyReport, error)
	UsageHealth(ctx context.Context, from time.Time) ([]budget.UsageHealth, error)
}

// Config tunes the admin API. The zero value means "use the defaults" (and, without Tokens,
// every admin route answers 401).
type Config struct {
	// Tokens are the accepted admin bearer tokens (PURSER_ADMIN_TOKEN, comma separated).
	Tokens []string
	// Logger receives internal errors (never secrets). Default: discard.
	Logger *slog.Logger
	// MaxBodyBytes bounds request bodies (default 1 MiB); larger ones get 413.
	MaxBodyBytes int64
	// RequestTimeout bounds each request's work (default 30s).
	RequestTimeout time.Duration
	// ExportTimeout bounds a streamed CSV or JSON-lines export (default 10 minutes).
	ExportTimeout time.Duration
	// Now is the clock for defaults such as "this month" in spend reports (default time.Now).
	Now func() time.Time
}

// Defaults.
const (
	DefaultMaxBodyBytes   = 1 << 20
	DefaultRequestTimeout = 30 * time.Second
	DefaultExportTimeout  = 10 * time.Minute
)

//go:embed openapi.yaml
var openAPISpec []byte

// API is the admin API: an http.Handler for /v1/, and the sign-in of the console, which
// renders what the API answers for the signed-in principal (see WithPrincipal).
type API struct {
	svc    Ledger
	cfg    Config
	log    *slog.Logger
	tokens [][32]byte // SHA-256 of each bootstrap token: fixed-length constant-time compares
	mux    *http.ServeMux
}

// route is one registered route; routes() is the single list the mux is built from (and the
// list openapi.yaml and the role table test are checked against).
type route struct {
	method, path string
	rule         rule
	handle       func(s *API, r *http.Request, c caller) (int, any, error)
}

// rule says who may call a route. Within it, a manager is further limited to its scope: lists
// are filtered, a resource outside it is refused (403), and the ledger refuses changes outside
// it (see budget.Role).
type rule struct {
	roles  []budget.Role // admin roles that may call it
	key    bool          // a key holder may call it (about its own key and budgets)
	public bool          // anyone may call it
}

var (
	ruleRead       = rule{roles: []budget.Role{budget.RoleAdmin, budget.RoleManager, budget.RoleViewer}}
	ruleChange     = rule{roles: []budget.Role{budget.RoleAdmin, budget.RoleManager}}
	ruleAdmin      = rule{roles: []budget.Role{budget.RoleAdmin}}
	ruleReadGlobal = rule{roles: []budget.Role{budget.RoleAdmin, budget.RoleViewer}} // reads not split by subject
	ruleKey        = rule{key: true}
	rulePublic     = rule{public: true}
)

func (r rule) allows(role budget.Role) bool { return slices.Contains(r.roles, role) }

func routes() []route {
	return []route{
		{"POST", "/v1/keys", ruleChange, (*API).createKey},
		{"GET", "/v1/keys", ruleRead, (*API).listKeys},
		{"GET", "/v1/keys/{id}", ruleRead, (*API).getKey},
		{"PATCH", "/v1/keys/{id}", ruleChange, (*API).updateKey},
		{"DELETE", "/v1/keys/{id}", ruleChange, (*API).revokeKey},
		{"POST", "/v1/keys/{id}/rotate", ruleChange, (*API).rotateKey},

		{"POST", "/v1/budgets", ruleChange, (*API).createBudget},
		{"GET", "/v1/budgets", ruleRead, (*API).listBudgets},
		{"GET", "/v1/budgets/{id}", ruleRead, (*API).getBudget},
		{"PATCH", "/v1/budgets/{id}", ruleChange, (*API).updateBudget},
		{"DELETE", "/v1/budgets/{id}", ruleChange, (*API).deleteBudget},
		{"POST", "/v1/budgets/{id}/grants", ruleChange, (*API).addGrant},
		{"POST", "/v1/budgets/{id}/reset", ruleChange, (*API).resetBudget},
		{"GET", "/v1/budgets/{id}/history", ruleRead, (*API).budgetHistory},

		{"POST", "/v1/templates", ruleAdmin, (*API).createTemplate},
		{"GET", "/v1/templates", ruleRead, (*API).listTemplates},
		{"GET", "/v1/templates/{id}", ruleRead, (*API).getTemplate},
		{"PATCH", "/v1/templates/{id}", ruleAdmin, (*API).updateTemplate},
		{"DELETE", "/v1/templates/{id}", ruleAdmin, (*API).deleteTemplate},

		{"POST", "/v1/tokens", ruleAdmin, (*API).createToken},
		{"GET", "/v1/tokens", ruleAdmin, (*API).listTokens},
		{"GET", "/v1/tokens/{id}", ruleAdmin, (*API).getToken},
		{"DELETE", "/v1/tokens/{id}", ruleAdmin, (*API).revokeToken},

		{"GET", "/v1/status", ruleRead, (*API).status},
		{"GET", "/v1/spend", ruleRead, (*API).spend},
		{"GET", "/v1/requests", ruleRead, (*API).listRequests},
		{"GET", "/v1/audit", ruleReadGlobal, (*API).audit},
		{"GET", "/v1/alerts", ruleRead, (*API).alerts},
		{"POST", "/v1/verify", ruleReadGlobal, (*API).verify},

		{"GET", "/v1/me", ruleKey, (*API).me},
		{"GET", "/v1/me/requests", ruleKey, (*API).myRequests},
		{"GET", "/v1/me/budgets/{id}/history", ruleKey, (*API).myBudgetHistory},
		{"GET", "/v1/openapi.yaml", rulePublic, nil},
	}
}

// New returns the admin API. Mount it at /v1/ (it matches full paths: no prefix stripping).
func New(svc Ledger, cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.ExportTimeout <= 0 {
		cfg.ExportTimeout = DefaultExportTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &API{svc: svc, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	for _, t := range cfg.Tokens {
		if t != "" {
			s.tokens = append(s.tokens, sha256.Sum256([]byte(t)))
		}
	}
	for _, rt := range routes() {
		s.mux.Handle(rt.method+" "+rt.path, s.wrap(rt))
	}
	return s
}

// ServeHTTP answers unknown routes and wrong methods with the JSON error shape too.
func (s *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := s.mux.Handler(r); pattern == "" {
		// Let the mux decide between 404 and 405 (and set Allow), then answer in JSON.
		c := &statusCapture{header: http.Header{}}
		s.mux.ServeHTTP(c, r)
		if allow := c.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		if c.status == http.StatusMethodNotAllowed {
			writeError(w, &apiError{status: http.StatusMethodNotAllowed, code: codeInvalid,
				msg: r.Method + " is not allowed on " + r.URL.Path})
			return
		}
		writeError(w, &apiError{status: http.StatusNotFound, code: codeNotFound, msg: "no route " + r.Method + " " + r.URL.Path})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// statusCapture records what the mux's own 404/405 handler would answer.
type statusCapture struct {
	header http.Header
	status int
}

func (c *statusCapture) Header() http.Header         { return c.header }
func (c *statusCapture) Write(b []byte) (int, error) { return len(b), nil }
func (c *statusCapture) WriteHeader(status int)      { c.status = status }

func (s *API) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if rt.rule.public {
			w.Header().Set("Content-Type", "application/yaml")
			_, _ = w.Write(openAPISpec)
			return
		}
		timeout := s.cfg.RequestTimeout
		if exporting(r) {
			timeout = s.cfg.ExportTimeout
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		r = r.WithContext(ctx)
		c, err := s.authorize(r, rt)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		}
		if err := checkRequestText(r); err != nil {
			s.fail(w, r, err)
			return
		}
		status, body, err := rt.handle(s, r, c)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if st, ok := body.(*stream); ok {
			s.writeStream(w, r, st)
			return
		}
		writeJSON(w, status, body)
	})
}
