package admin

import (
	"net/http"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Token is an admin token as the admin API shows it (the secret only when created).
type Token struct {
	ID        string     `json:"id"`
	Token     string     `json:"token,omitempty"` // the secret: only in the answer that created it
	Prefix    string     `json:"prefix"`
	Name      string     `json:"name"`
	Role      string     `json:"role"`
	Scope     []string   `json:"scope"`
	State     string     `json:"state"` // active | revoked | expired
	ExpiresAt *time.Time `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
	CreatedBy string     `json:"created_by"`
	CreatedAt time.Time  `json:"created_at"`
}

func toToken(t budget.Token, now time.Time) Token {
	out := Token{ID: t.ID, Prefix: t.Prefix, Name: t.Name, Role: string(t.Role), Scope: nonNil([]string(t.Scope)),
		State: "active", ExpiresAt: optTime(t.ExpiresAt), RevokedAt: optTime(t.RevokedAt), CreatedBy: t.CreatedBy,
		CreatedAt: t.CreatedAt.UTC()}
	switch {
	case !t.RevokedAt.IsZero():
		out.State = "revoked"
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		out.State = "expired"
	}
	return out
}

func (s *API) createToken(r *http.Request, c caller) (int, any, error) {
	var in struct {
		Name      opt[string]
		Role      opt[string]
		Scope     opt[[]string]
		ExpiresAt opt[time.Time]
	}
	if err := decodeBody(r, false,
		field{"name", &in.Name, wantString, false},
		field{"role", &in.Role, `"admin", "manager" or "viewer"`, false},
		field{"scope", &in.Scope, wantStrings, true},
		field{"expires_at", &in.ExpiresAt, wantTime, true},
	); err != nil {
		return 0, nil, err
	}
	t, secret, err := s.svc.CreateToken(r.Context(), c.actor(), budget.TokenSpec{Name: in.Name.V, Role: in.Role.V,
		Scope: in.Scope.V, ExpiresAt: in.ExpiresAt.V})
	if err != nil {
		return 0, nil, err
	}
	out := toToken(t, s.cfg.Now())
	out.Token = secret
	return http.StatusCreated, out, nil
}

func (s *API) listTokens(r *http.Request, _ caller) (int, any, error) {
	limit, err := pageSize(r)
	if err != nil {
		return 0, nil, err
	}
	after, err := parseKeyCursor(r.URL.Query().Get("after"))
	if err != nil {
		return 0, nil, err
	}
	ts, err := s.svc.Tokens(r.Context(), budget.TokenQuery{After: after, Limit: limit + 1})
	if err != nil {
		return 0, nil, err
	}
	ts, next := nextPage(ts, limit, func(t budget.Token) any {
		return keyCursor(budget.KeyCursor{CreatedAt: t.CreatedAt, ID: t.ID})
	})
	now := s.cfg.Now()
	out := make([]Token, 0, len(ts))
	for _, t := range ts {
		out = append(out, toToken(t, now))
	}
	return http.StatusOK, map[string]any{"tokens": out, "next_after": next}, nil
}

func (s *API) getToken(r *http.Request, _ caller) (int, any, error) {
	t, err := s.svc.Token(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toToken(t, s.cfg.Now()), nil
}

func (s *API) revokeToken(r *http.Request, c caller) (int, any, error) {
	t, err := s.svc.RevokeToken(r.Context(), c.actor(), r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toToken(t, s.cfg.Now()), nil
}
