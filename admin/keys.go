package admin

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget"
)

const (
	wantString  = "a string"
	wantStrings = "an array of strings"
	wantTime    = `an RFC 3339 time such as "2026-12-31T00:00:00Z"`
	wantBool    = "true or false"
	wantInt     = "an integer"
	wantInts    = "an array of integers"
	wantMap     = "an object of string values"
	wantAmount  = `a decimal string such as "12.50" (or "150000" tokens)`
)

type keyInput struct {
	Name          opt[string]
	Subjects      opt[[]string]
	AllowedModels opt[[]string]
	ExpiresAt     opt[time.Time]
}

func (in *keyInput) fields() []field {
	return []field{
		{"name", &in.Name, wantString, false},
		{"subjects", &in.Subjects, wantStrings, true},
		{"allowed_models", &in.AllowedModels, wantStrings, true},
		{"expires_at", &in.ExpiresAt, wantTime, true},
	}
}

// apply overlays the present fields on spec.
func (in *keyInput) apply(spec *budget.KeySpec) {
	if in.Name.Set {
		spec.Name = in.Name.V
	}
	if in.Subjects.Set {
		spec.Subjects = in.Subjects.V
	}
	if in.AllowedModels.Set {
		spec.AllowedModels = in.AllowedModels.V
	}
	if in.ExpiresAt.Set {
		spec.ExpiresAt = in.ExpiresAt.V // zero when null: never expires
	}
}

func (s *API) createKey(r *http.Request, c caller) (int, any, error) {
	var in keyInput
	if err := decodeBody(r, false, in.fields()...); err != nil {
		return 0, nil, err
	}
	var spec budget.KeySpec
	in.apply(&spec)
	k, secret, err := s.svc.CreateKeyAs(r.Context(), c.actor(), spec)
	if err != nil {
		return 0, nil, err
	}
	out := toKey(k, s.cfg.Now())
	out.Key = secret
	return http.StatusCreated, out, nil
}

func (s *API) listKeys(r *http.Request, c caller) (int, any, error) {
	limit, err := pageSize(r)
	if err != nil {
		return 0, nil, err
	}
	after, err := parseKeyCursor(r.URL.Query().Get("after"))
	if err != nil {
		return 0, nil, err
	}
	subject, err := querySubject(r)
	if err != nil {
		return 0, nil, err
	}
	q := budget.KeyQuery{Name: r.URL.Query().Get("name"), Subject: subject, After: after, Limit: limit + 1, Scope: c.scope()}
	keys, err := s.svc.Keys(r.Context(), q)
	if err != nil {
		return 0, nil, err
	}
	keys, next := nextPage(keys, limit, func(k budget.Key) any { return keyCursor(budget.CursorOf(k)) })
	now := s.cfg.Now()
	out := make([]Key, 0, len(keys))
	for _, k := range keys {
		out = append(out, toKey(k, now))
	}
	return http.StatusOK, map[string]any{"keys": out, "next_after": next}, nil
}

// keyCursor encodes a position in the list of keys as the opaque "after" parameter.
func keyCursor(c budget.KeyCursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.CreatedAt.UnixMicro(), 10) + "/" + c.ID))
}

// parseKeyCursor decodes an "after" parameter that keyCursor made ("" is the start).
func parseKeyCursor(s string) (budget.KeyCursor, error) {
	if s == "" {
		return budget.KeyCursor{}, nil
	}
	bad := invalid("after", "is not a cursor this API returned as next_after")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return budget.KeyCursor{}, bad
	}
	at, id, ok := strings.Cut(string(raw), "/")
	micros, err := strconv.ParseInt(at, 10, 64)
	if _, ctl := controlChar(id); !ok || err != nil || id == "" || ctl {
		return budget.KeyCursor{}, bad
	}
	return budget.KeyCursor{CreatedAt: time.UnixMicro(micros), ID: id}, nil
}

func (s *API) getKey(r *http.Request, c caller) (int, any, error) {
	k, err := s.svc.Key(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	if c.manager() && !c.scope().CoversKey(k) {
		return 0, nil, outOfScope(c, "key "+k.ID)
	}
	return http.StatusOK, toKey(k, s.cfg.Now()), nil
}

func (s *API) updateKey(r *http.Request, c caller) (int, any, error) {
	var in keyInput
	if err := decodeBody(r, false, in.fields()...); err != nil {
		return 0, nil, err
	}
	id := r.PathValue("id")
	cur, err := s.svc.Key(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	spec := budget.KeySpec{Name: cur.Name, ExpiresAt: cur.ExpiresAt}
	for _, sub := range cur.Subjects {
		spec.Subjects = append(spec.Subjects, string(sub))
	}
	for _, m := range cur.AllowedModels {
		spec.AllowedModels = append(spec.AllowedModels, string(m))
	}
	in.apply(&spec)
	k, err := s.svc.UpdateKeyAs(r.Context(), c.actor(), id, spec)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toKey(k, s.cfg.Now()), nil
}

func (s *API) revokeKey(r *http.Request, c caller) (int, any, error) {
	k, err := s.svc.RevokeKeyAs(r.Context(), c.actor(), r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, toKey(k, s.cfg.Now()), nil
}

func (s *API) rotateKey(r *http.Request, c caller) (int, any, error) {
	if err := decodeBody(r, true); err != nil {
		return 0, nil, err
	}
	id := r.PathValue("id")
	k, secret, err := s.svc.RotateKeyAs(r.Context(), c.actor(), id)
	if errors.Is(err, budget.ErrNotFound) {
		// The ledger does not rotate revoked keys: tell that apart from an unknown id.
		cur, kerr := s.svc.Key(r.Context(), id)
		switch {
		case kerr == nil && !cur.RevokedAt.IsZero():
			return 0, nil, conflict("key %s is revoked and cannot be rotated; create a new key", id)
		case kerr != nil && !errors.Is(kerr, budget.ErrNotFound):
			return 0, nil, kerr // not a 404: the key may well exist
		}
	}
	if err != nil {
		return 0, nil, err
	}
	out := toKey(k, s.cfg.Now())
	out.Key = secret
	return http.StatusOK, out, nil
}
