// Package admin is purser's HTTP admin API: keys, budgets, default-budget templates, grants,
// resets, status, spend reports, the audit log, alerts and reconciliation, plus GET /v1/me for
// API key holders. It speaks JSON; amounts are decimal strings in the budget's unit ("12.50"
// USD, "150000" tokens) and times are RFC 3339. admin/openapi.yaml describes every route.
//
// Admin routes take `Authorization: Bearer <admin token>`; /v1/me takes the caller's own
// purser API key (Authorization: Bearer pk_... or x-api-key) and shows only that key and the
// budgets of its subjects. The two credentials never stand in for each other.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Ledger is what the admin API needs of the ledger (*budget.Service).
type Ledger interface {
	CreateKey(ctx context.Context, actor string, spec budget.KeySpec) (budget.Key, string, error)
	UpdateKey(ctx context.Context, actor, id string, spec budget.KeySpec) (budget.Key, error)
	RevokeKey(ctx context.Context, actor, id string) (budget.Key, error)
	RotateKey(ctx context.Context, actor, id string) (budget.Key, string, error)
	Keys(ctx context.Context, q budget.KeyQuery) ([]budget.Key, error)
	Key(ctx context.Context, id string) (budget.Key, error)
	Authenticate(ctx context.Context, secret string) (*budget.Key, error)

	CreateBudget(ctx context.Context, actor string, d budget.Definition) (budget.Budget, error)
	UpdateBudget(ctx context.Context, actor string, id int64, d budget.Definition) (budget.Budget, error)
	DeleteBudget(ctx context.Context, actor string, id int64) error
	Budget(ctx context.Context, id int64) (budget.Budget, error)
	Budgets(ctx context.Context, q budget.BudgetQuery) ([]budget.Budget, error)
	ResetBudget(ctx context.Context, actor string, id int64, reason string) (time.Time, error)
	AddGrant(ctx context.Context, actor string, budgetID, amount int64, expiresAt time.Time, reason string) (budget.Grant, error)

	CreateTemplate(ctx context.Context, actor string, d budget.Definition) (budget.Budget, error)
	UpdateTemplate(ctx context.Context, actor string, id int64, d budget.Definition) (budget.Budget, error)
	DeleteTemplate(ctx context.Context, actor string, id int64) error
	Templates(ctx context.Context) ([]budget.Template, error)

	Status(ctx context.Context, subjects ...budget.Subject) ([]budget.Status, error)
	Spend(ctx context.Context, q budget.SpendQuery) ([]budget.SpendRow, error)
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
	// Now is the clock for defaults such as "this month" in spend reports (default time.Now).
	Now func() time.Time
}

// Defaults.
const (
	DefaultMaxBodyBytes   = 1 << 20
	DefaultRequestTimeout = 30 * time.Second
)

//go:embed openapi.yaml
var openAPISpec []byte

type server struct {
	svc    Ledger
	cfg    Config
	log    *slog.Logger
	tokens [][32]byte // SHA-256 of each admin token: fixed-length constant-time compares
	mux    *http.ServeMux
}

// auth says who may call a route.
type auth int

const (
	authAdmin  auth = iota // an admin token
	authAPIKey             // a purser API key (the caller's own)
	authNone               // anyone (the OpenAPI document)
)

// route is one registered route; routes() is the single list the mux is built from (and the
// list openapi.yaml is checked against).
type route struct {
	method, path string
	auth         auth
	handle       func(s *server, r *http.Request, c caller) (int, any, error)
}

// caller is who is calling: an admin (actor set) or a key holder (key set).
type caller struct {
	actor string
	key   *budget.Key
}

func routes() []route {
	return []route{
		{"POST", "/v1/keys", authAdmin, (*server).createKey},
		{"GET", "/v1/keys", authAdmin, (*server).listKeys},
		{"GET", "/v1/keys/{id}", authAdmin, (*server).getKey},
		{"PATCH", "/v1/keys/{id}", authAdmin, (*server).updateKey},
		{"DELETE", "/v1/keys/{id}", authAdmin, (*server).revokeKey},
		{"POST", "/v1/keys/{id}/rotate", authAdmin, (*server).rotateKey},

		{"POST", "/v1/budgets", authAdmin, (*server).createBudget},
		{"GET", "/v1/budgets", authAdmin, (*server).listBudgets},
		{"GET", "/v1/budgets/{id}", authAdmin, (*server).getBudget},
		{"PATCH", "/v1/budgets/{id}", authAdmin, (*server).updateBudget},
		{"DELETE", "/v1/budgets/{id}", authAdmin, (*server).deleteBudget},
		{"POST", "/v1/budgets/{id}/grants", authAdmin, (*server).addGrant},
		{"POST", "/v1/budgets/{id}/reset", authAdmin, (*server).resetBudget},

		{"POST", "/v1/templates", authAdmin, (*server).createTemplate},
		{"GET", "/v1/templates", authAdmin, (*server).listTemplates},
		{"GET", "/v1/templates/{id}", authAdmin, (*server).getTemplate},
		{"PATCH", "/v1/templates/{id}", authAdmin, (*server).updateTemplate},
		{"DELETE", "/v1/templates/{id}", authAdmin, (*server).deleteTemplate},

		{"GET", "/v1/status", authAdmin, (*server).status},
		{"GET", "/v1/spend", authAdmin, (*server).spend},
		{"GET", "/v1/audit", authAdmin, (*server).audit},
		{"GET", "/v1/alerts", authAdmin, (*server).alerts},
		{"POST", "/v1/verify", authAdmin, (*server).verify},

		{"GET", "/v1/me", authAPIKey, (*server).me},
		{"GET", "/v1/openapi.yaml", authNone, nil},
	}
}

// New returns the admin API. Mount it at /v1/ (it matches full paths: no prefix stripping).
func New(svc Ledger, cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &server{svc: svc, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
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
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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

func (s *server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if rt.auth == authNone {
			w.Header().Set("Content-Type", "application/yaml")
			_, _ = w.Write(openAPISpec)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		var c caller
		var err error
		if rt.auth == authAdmin {
			c.actor, err = s.adminActor(r)
		} else {
			c.key, err = s.apiKey(r)
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		}
		status, body, err := rt.handle(s, r, c)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, status, body)
	})
}

// Actor returns the audit actor of an admin token: "admin:" and the first 6 hex characters of
// its SHA-256 — enough to tell tokens apart in the audit log, useless to an attacker.
func Actor(token string) string {
	h := sha256.Sum256([]byte(token))
	return "admin:" + hex.EncodeToString(h[:])[:6]
}

func (s *server) adminActor(r *http.Request) (string, error) {
	if len(s.tokens) == 0 {
		return "", &apiError{status: http.StatusUnauthorized, code: codeUnauthorized,
			msg: "the admin API is disabled until PURSER_ADMIN_TOKEN is set"}
	}
	tok, ok := bearer(r)
	if !ok {
		return "", &apiError{status: http.StatusUnauthorized, code: codeUnauthorized,
			msg: "missing admin token: send Authorization: Bearer <admin token>"}
	}
	h := sha256.Sum256([]byte(tok))
	match := 0
	for i := range s.tokens {
		match |= subtle.ConstantTimeCompare(h[:], s.tokens[i][:]) // no early exit
	}
	if match == 1 {
		return Actor(tok), nil
	}
	if strings.HasPrefix(tok, budget.SecretPrefix) {
		return "", &apiError{status: http.StatusForbidden, code: codeForbidden,
			msg: "a purser API key cannot call the admin API (key holders use GET /v1/me)"}
	}
	return "", &apiError{status: http.StatusUnauthorized, code: codeUnauthorized, msg: "invalid admin token"}
}

// apiKey authenticates a key holder: Authorization: Bearer pk_... or x-api-key.
func (s *server) apiKey(r *http.Request) (*budget.Key, error) {
	secret, ok := bearer(r)
	if !ok {
		secret = strings.TrimSpace(r.Header.Get("x-api-key"))
	}
	if secret == "" {
		return nil, &apiError{status: http.StatusUnauthorized, code: codeUnauthorized,
			msg: "missing API key: send Authorization: Bearer <purser API key> or x-api-key"}
	}
	k, err := s.svc.Authenticate(r.Context(), secret)
	switch {
	case err == nil:
		return k, nil
	case isAny(err, budget.ErrKeyUnknown):
		return nil, &apiError{status: http.StatusUnauthorized, code: codeUnauthorized, msg: "unknown API key"}
	case isAny(err, budget.ErrKeyRevoked):
		return nil, &apiError{status: http.StatusUnauthorized, code: codeUnauthorized, msg: "API key revoked"}
	case isAny(err, budget.ErrKeyExpired):
		return nil, &apiError{status: http.StatusUnauthorized, code: codeUnauthorized, msg: "API key expired"}
	}
	return nil, err
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
