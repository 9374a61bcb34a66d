package admin_test

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/admin"
)

func TestAdmin_Keys(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	actor := admin.Actor(adminToken)
	exp := time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second)

	r := h.admin("POST", "/v1/keys", map[string]any{
		"name": "ci-bot", "subjects": []string{"team:ml", "user:alice"}, "allowed_models": []string{"gpt-4o*"},
		"expires_at": exp.Format(time.RFC3339),
	}, http.StatusCreated)
	id, secret := str(r.body["id"]), str(r.body["key"])
	require.True(t, strings.HasPrefix(secret, "pk_"))
	require.Equal(t, secret[:11], r.body["prefix"])
	require.Equal(t, "ci-bot", r.body["name"])
	require.Equal(t, []any{"team:ml", "user:alice"}, r.body["subjects"])
	require.Equal(t, []any{"gpt-4o*"}, r.body["allowed_models"])
	require.Equal(t, exp.Format(time.RFC3339), r.body["expires_at"])
	require.Equal(t, "active", r.body["state"])
	require.NotEmpty(t, r.body["created_at"])

	// Stored only hashed: the secret appears nowhere in the row.
	var row string
	var hash []byte
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT row_to_json(k)::text, secret_hash FROM api_keys k WHERE id = $1`, id).Scan(&row, &hash))
	sum := sha256.Sum256([]byte(secret))
	require.Equal(t, sum[:], hash)
	require.NotContains(t, row, secret)
	require.NotContains(t, row, secret[11:])

	// Never shown again: not in lists, not by id, no hashes either.
	r = h.admin("GET", "/v1/keys", nil, http.StatusOK)
	require.Len(t, list(r.body["keys"]), 1)
	require.NotContains(t, obj(list(r.body["keys"])[0]), "key")
	require.NotContains(t, string(r.raw), secret[11:])
	require.NotContains(t, string(r.raw), "hash")
	r = h.admin("GET", "/v1/keys/"+id, nil, http.StatusOK)
	require.NotContains(t, r.body, "key")
	require.Equal(t, id, r.body["id"])

	// PATCH changes only what is sent; null clears.
	r = h.admin("PATCH", "/v1/keys/"+id, map[string]any{"name": "ci"}, http.StatusOK)
	require.Equal(t, "ci", r.body["name"])
	require.Equal(t, []any{"team:ml", "user:alice"}, r.body["subjects"])
	require.Equal(t, exp.Format(time.RFC3339), r.body["expires_at"])
	r = h.admin("PATCH", "/v1/keys/"+id, map[string]any{"expires_at": nil, "allowed_models": nil}, http.StatusOK)
	require.Nil(t, r.body["expires_at"])
	require.Equal(t, []any{}, r.body["allowed_models"])
	require.Equal(t, "ci", r.body["name"])

	// Rotation: a new secret once; the old one stops working, the id stays.
	r = h.admin("POST", "/v1/keys/"+id+"/rotate", nil, http.StatusOK)
	secret2 := str(r.body["key"])
	require.True(t, strings.HasPrefix(secret2, "pk_"))
	require.NotEqual(t, secret, secret2)
	require.Equal(t, id, r.body["id"])
	require.NotNil(t, r.body["rotated_at"])
	require.Equal(t, http.StatusUnauthorized, h.call("GET", "/v1/me", nil, secret).status)
	require.Equal(t, http.StatusOK, h.call("GET", "/v1/me", nil, secret2).status)

	// Revoke: 200 with the key, idempotent; rotating a revoked key is a conflict.
	r = h.admin("DELETE", "/v1/keys/"+id, nil, http.StatusOK)
	require.Equal(t, "revoked", r.body["state"])
	require.NotNil(t, r.body["revoked_at"])
	h.admin("DELETE", "/v1/keys/"+id, nil, http.StatusOK)
	r = h.admin("POST", "/v1/keys/"+id+"/rotate", nil, http.StatusConflict)
	require.Equal(t, "conflict", r.errCode())
	require.Equal(t, "key "+id+" is revoked and cannot be rotated; create a new key", r.errMsg())
	r = h.admin("POST", "/v1/keys/key_nope/rotate", nil, http.StatusNotFound)
	require.Equal(t, "key key_nope not found", r.errMsg())
	h.admin("DELETE", "/v1/keys/key_nope", nil, http.StatusNotFound)
	h.admin("PATCH", "/v1/keys/key_nope", map[string]any{"name": "x"}, http.StatusNotFound)

	require.Equal(t, [][3]string{
		{"key.create", "key:" + id, actor},
		{"key.update", "key:" + id, actor},
		{"key.update", "key:" + id, actor},
		{"key.rotate", "key:" + id, actor},
		{"key.revoke", "key:" + id, actor},
		{"key.revoke", "key:" + id, actor},
	}, h.auditActions())
	// The audit details never carry a secret.
	var details string
	require.NoError(t, h.schema.Pool.QueryRow(ctx, `SELECT string_agg(details::text, ' ') FROM audit_log`).Scan(&details))
	require.NotContains(t, details, secret[11:])
	require.NotContains(t, details, secret2[11:])
}

func TestAdmin_KeyValidation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	for name, tc := range map[string]struct {
		body       any
		field, msg string
	}{
		"NoName":         {map[string]any{"subjects": []string{"team:ml"}}, "name", "name: is required"},
		"LongName":       {map[string]any{"name": strings.Repeat("n", 201)}, "name", "name: is longer than 200 bytes"},
		"BadSubject":     {map[string]any{"name": "k", "subjects": []string{"team:ml", "ml"}}, "subjects", `subjects: subjects[1]: subject "ml": want kind:id (kinds: key, user, team, org, workload, namespace, tag, route) or global`},
		"KeySubject":     {map[string]any{"name": "k", "subjects": []string{"key:other"}}, "subjects", `subjects: "key:other": a key's own key: subject is implicit`},
		"BadGlob":        {map[string]any{"name": "k", "allowed_models": []string{"gpt-4o", "gpt-[4"}}, "allowed_models[1]", `allowed_models[1]: pattern "gpt-[4": unclosed '[' at byte 4`},
		"PastExpiry":     {map[string]any{"name": "k", "expires_at": past}, "expires_at", "expires_at: is in the past"},
		"BadTime":        {map[string]any{"name": "k", "expires_at": "tomorrow"}, "expires_at", `expires_at: must be an RFC 3339 time such as "2026-12-31T00:00:00Z"`},
		"SubjectsString": {map[string]any{"name": "k", "subjects": "team:ml"}, "subjects", "subjects: must be an array of strings"},
		"NullName":       {map[string]any{"name": nil}, "name", "name: must not be null"},
		"UnknownField":   {map[string]any{"name": "k", "secret": "pk_mine"}, "secret", "secret: unknown field"},
		"NotAnObject":    {`["k"]`, "", "request body must be a JSON object"},
		"Empty":          {"", "", "request body must be a JSON object"},
		"Trailing":       {`{"name": "k"} {"name": "j"}`, "", "request body must hold a single JSON object"},
		"Syntax":         {`{"name": "k",}`, "", "request body is not valid JSON (at byte 14): invalid character '}' looking for beginning of object key string"},
	} {
		t.Run(name, func(t *testing.T) {
			h.invalid("POST", "/v1/keys", tc.body, tc.field, tc.msg)
		})
	}
	require.Empty(t, h.auditActions(), "nothing invalid was written")
}
