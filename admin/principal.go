package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"

	"github.com/purser-dev/purser/budget"
)

// Principal is who calls the API: an admin credential, with its role, or a key holder.
type Principal struct {
	// Ref names the credential durably, for a console session: "env:<SHA-256 of a bootstrap
	// token, hex>", "token:<id>" or "key:<id>". Principal(ctx, ref) re-checks it.
	Ref string
	// Name is what to show: the token's or key's name ("bootstrap token" for the environment's).
	Name string
	// Actor is the admin credential as the author of changes (zero for a key holder).
	Actor budget.Actor
	// Key is the key holder's key (nil for an admin credential).
	Key *budget.Key
}

// Role is the principal's role, or "key" for a key holder.
func (p *Principal) Role() string {
	if p.Key != nil {
		return "key"
	}
	return string(p.Actor.Role)
}

type principalKey struct{}

// WithPrincipal returns a context carrying an already authenticated principal: the API then
// serves the request as that principal, under the same route rules, without reading its
// Authorization header. Only in-process callers can set it (the console, after checking its
// session).
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

func principalFrom(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok && p != nil
}

// caller is the principal of one request.
type caller struct{ p *Principal }

func (c caller) actor() budget.Actor { return c.p.Actor }
func (c caller) key() *budget.Key    { return c.p.Key }
func (c caller) manager() bool       { return c.p.Key == nil && c.p.Actor.Role == budget.RoleManager }

// scope is the manager's scope, nil for every other admin role (no restriction).
func (c caller) scope() budget.Scope {
	if c.manager() {
		return c.p.Actor.Scope
	}
	return nil
}

// authorize finds the principal of r and checks the route's rule.
func (s *API) authorize(r *http.Request, rt route) (caller, error) {
	p, ok := principalFrom(r.Context())
	if !ok {
		var err error
		if rt.rule.key {
			p, err = s.keyPrincipal(r)
		} else {
			p, err = s.adminPrincipal(r)
		}
		if err != nil {
			return caller{}, err
		}
	}
	if p.Key != nil {
		if !rt.rule.key {
			return caller{}, &apiError{status: http.StatusForbidden, code: codeForbidden,
				msg: "a purser API key cannot call the admin API (key holders use GET /v1/me)"}
		}
		return caller{p}, nil
	}
	if !rt.rule.allows(p.Actor.Role) {
		msg := "a " + string(p.Actor.Role) + " token cannot call " + rt.method + " " + rt.path
		if rt.rule.key {
			msg = rt.method + " " + rt.path + " is for key holders (an admin credential is not a key)"
		}
		return caller{}, &apiError{status: http.StatusForbidden, code: codeForbidden, msg: msg}
	}
	return caller{p}, nil
}

// Actor returns the audit actor of a bootstrap admin token: "admin:" and the first 6 hex
// characters of its SHA-256 — enough to tell tokens apart in the audit log, useless to an
// attacker.
func Actor(token string) string {
	h := sha256.Sum256([]byte(token))
	return envActor(h)
}

func envActor(h [32]byte) string { return "admin:" + hex.EncodeToString(h[:])[:6] }

// envPrincipal is a bootstrap token's principal.
func envPrincipal(h [32]byte) *Principal {
	return &Principal{Ref: "env:" + hex.EncodeToString(h[:]), Name: "bootstrap token",
		Actor: budget.AdminActor(envActor(h))}
}

func tokenPrincipal(t *budget.Token) *Principal {
	return &Principal{Ref: "token:" + t.ID, Name: t.Name, Actor: t.Actor()}
}

func keyPrincipal(k *budget.Key) *Principal {
	return &Principal{Ref: "key:" + k.ID, Name: k.Name, Key: k}
}

// isEnvToken compares h with every bootstrap token's hash in constant time.
func (s *API) isEnvToken(h [32]byte) bool {
	match := 0
	for i := range s.tokens {
		match |= subtle.ConstantTimeCompare(h[:], s.tokens[i][:]) // no early exit
	}
	return match == 1
}

func (s *API) adminPrincipal(r *http.Request) (*Principal, error) {
	tok, ok := bearer(r)
	if len(s.tokens) == 0 && !(ok && strings.HasPrefix(tok, budget.TokenSecretPrefix)) {
		return nil, &apiError{status: http.StatusUnauthorized, code: codeUnauthorized,
			msg: "the admin API is disabled until PURSER_ADMIN_TOKEN is set"}
	}
	if !ok {
		return nil, &apiError{status: http.StatusUnauthorized, code: codeUnauthorized,
			msg: "missing admin token: send Authorization: Bearer <admin token>"}
	}
	return s.adminSecret(r.Context(), tok)
}

// adminSecret authenticates an admin credential: a bootstrap token or a stored token.
func (s *API) adminSecret(ctx context.Context, tok string) (*Principal, error) {
	if h := sha256.Sum256([]byte(tok)); s.isEnvToken(h) {
		return envPrincipal(h), nil
	}
	if strings.HasPrefix(tok, budget.SecretPrefix) {
		return nil, &apiError{status: http.StatusForbidden, code: codeForbidden,
			msg: "a purser API key cannot call the admin API (key holders use GET /v1/me)"}
	}
	if strings.HasPrefix(tok, budget.TokenSecretPrefix) {
		t, err := s.svc.AuthenticateToken(ctx, tok)
		switch {
		case err == nil:
			return tokenPrincipal(t), nil
		case errors.Is(err, budget.ErrTokenRevoked):
			return nil, unauthorized("admin token revoked")
		case errors.Is(err, budget.ErrTokenExpired):
			return nil, unauthorized("admin token expired")
		case !errors.Is(err, budget.ErrTokenUnknown):
			return nil, err
		}
	}
	return nil, unauthorized("invalid admin token")
}

func unauthorized(msg string) *apiError {
	return &apiError{status: http.StatusUnauthorized, code: codeUnauthorized, msg: msg}
}

// keyPrincipal authenticates a key holder: Authorization: Bearer pk_... or x-api-key.
func (s *API) keyPrincipal(r *http.Request) (*Principal, error) {
	secret, ok := bearer(r)
	if !ok {
		secret = strings.TrimSpace(r.Header.Get("x-api-key"))
	}
	if secret == "" {
		return nil, unauthorized("missing API key: send Authorization: Bearer <purser API key> or x-api-key")
	}
	return s.keySecret(r.Context(), secret)
}

func (s *API) keySecret(ctx context.Context, secret string) (*Principal, error) {
	k, err := s.svc.Authenticate(ctx, secret)
	switch {
	case err == nil:
		return keyPrincipal(k), nil
	case errors.Is(err, budget.ErrKeyUnknown):
		return nil, unauthorized("unknown API key")
	case errors.Is(err, budget.ErrKeyRevoked):
		return nil, unauthorized("API key revoked")
	case errors.Is(err, budget.ErrKeyExpired):
		return nil, unauthorized("API key expired")
	}
	return nil, err
}

// ErrSignIn is the error SignIn and Principal return for a credential that is not (or no
// longer) valid; its message says why and never repeats the credential.
var ErrSignIn = errors.New("sign-in refused")

// SignIn authenticates a console sign-in: a purser API key (pk_...) signs in its holder, any
// other secret must be an admin token (bootstrap or stored).
func (s *API) SignIn(ctx context.Context, secret string) (*Principal, error) {
	secret = strings.TrimSpace(secret)
	var p *Principal
	var err error
	switch {
	case secret == "":
		err = unauthorized("enter an admin token or a purser API key")
	case strings.HasPrefix(secret, budget.SecretPrefix):
		p, err = s.keySecret(ctx, secret)
	default:
		p, err = s.adminSecret(ctx, secret)
	}
	return p, signInErr(err)
}

// Principal re-checks a principal reference (a console session's): the key or stored token
// must still be usable, a bootstrap token still configured.
func (s *API) Principal(ctx context.Context, ref string) (*Principal, error) {
	kind, id, _ := strings.Cut(ref, ":")
	switch kind {
	case "env":
		raw, err := hex.DecodeString(id)
		var h [32]byte
		if err == nil && len(raw) == len(h) {
			copy(h[:], raw)
			if s.isEnvToken(h) {
				return envPrincipal(h), nil
			}
		}
		return nil, signInErr(unauthorized("this bootstrap token is no longer configured"))
	case "token":
		t, err := s.svc.Token(ctx, id)
		if err == nil {
			err = t.Usable(s.cfg.Now())
		}
		switch {
		case err == nil:
			return tokenPrincipal(&t), nil
		case errors.Is(err, budget.ErrNotFound), errors.Is(err, budget.ErrTokenRevoked), errors.Is(err, budget.ErrTokenExpired):
			return nil, signInErr(unauthorized("the admin token was revoked or has expired"))
		}
		return nil, err
	case "key":
		k, err := s.svc.Key(ctx, id)
		if err == nil {
			err = k.Usable(s.cfg.Now())
		}
		switch {
		case err == nil:
			return keyPrincipal(&k), nil
		case errors.Is(err, budget.ErrNotFound), errors.Is(err, budget.ErrKeyRevoked), errors.Is(err, budget.ErrKeyExpired):
			return nil, signInErr(unauthorized("the API key was revoked or has expired"))
		}
		return nil, err
	}
	return nil, signInErr(unauthorized("unknown principal"))
}

// signInErr marks credential refusals with ErrSignIn (other errors, such as an unavailable
// database, pass through).
func signInErr(err error) error {
	var ae *apiError
	if errors.As(err, &ae) && (ae.status == http.StatusUnauthorized || ae.status == http.StatusForbidden) {
		msg := ae.msg
		if ae.status == http.StatusForbidden { // an API key sent as an admin token cannot happen here
			msg = "this credential cannot sign in"
		}
		return &signInError{msg}
	}
	return err
}

// signInError is a refused credential: errors.Is(err, ErrSignIn), and its message is fit to
// show the person signing in.
type signInError struct{ msg string }

func (e *signInError) Error() string        { return e.msg }
func (e *signInError) Is(target error) bool { return target == ErrSignIn }

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
