package admin_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStrictJSON_DuplicateKeys: encoding/json keeps the last of a repeated key, so a body
// could mean one thing to a reviewer and another to purser. Every repeated key is a 400
// naming it, wherever it is, and nothing is created.
func TestStrictJSON_DuplicateKeys(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.invalid("POST", "/v1/budgets",
		`{"name":"ml","subject":"team:ml","limit":"1","window":"day","limit":"1000000"}`,
		"limit", `limit: duplicate key "limit"`)
	h.invalid("POST", "/v1/keys", `{"name":"a","subjects":["team:ml"],"name":"b"}`, "name", `name: duplicate key "name"`)
	h.invalid("POST", "/v1/budgets",
		`{"name":"ml","subject":"team:ml","limit":"1","window":"day","filter":{"models":["a"],"models":["b"]}}`,
		"filter.models", `filter.models: duplicate key "models"`)
	// The same key in two different objects is not a duplicate.
	h.admin("POST", "/v1/keys", `{"name":"k","subjects":["team:ml"],"allowed_models":["gpt-4o"]}`, http.StatusCreated)
	budgets := h.admin("GET", "/v1/budgets", nil, http.StatusOK)
	require.Empty(t, budgets.body["budgets"], "no budget was created by a rejected body")
}

// TestStrictJSON_ControlCharacters: a NUL (or any other control character) in a name or any
// other string is a 400 naming the field, never a 500 from Postgres.
func TestStrictJSON_ControlCharacters(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, c := range []struct {
		name, path, body, field, msg string
	}{
		{"NULInBudgetName", "/v1/budgets", `{"name":"ml\u0000x","subject":"team:ml","limit":"1","window":"day"}`, "name", "name: contains the control character U+0000"},
		{"NULInKeyName", "/v1/keys", `{"name":"\u0000","subjects":["team:ml"]}`, "name", "name: contains the control character U+0000"},
		{"EscapeInArray", "/v1/keys", `{"name":"k","subjects":["team:ml"],"allowed_models":["gpt-4o","x\u001by"]}`, "allowed_models[1]", "allowed_models[1]: contains the control character U+001B"},
		{"C1InTimezone", "/v1/budgets", `{"name":"ml","subject":"team:ml","limit":"1","window":"day","timezone":"Europe/Berlin\u0085"}`, "timezone", "timezone: contains the control character U+0085"},
		{"DELInSubject", "/v1/budgets", `{"name":"ml","subject":"team:m\u007fl","limit":"1","window":"day"}`, "subject", "subject: contains the control character U+007F"},
		{"NewlineInReason", "/v1/budgets/1/reset", `{"reason":"a\nb"}`, "reason", "reason: contains the control character U+000A"},
		{"ControlInMemberName", "/v1/keys", `{"na\u0000me":"k"}`, "", "a member name contains the control character U+0000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h.invalid("POST", c.path, c.body, c.field, c.msg)
		})
	}
	// Query parameters and path values are held to the same rule.
	h.invalid("GET", "/v1/keys?name="+url.QueryEscape("a\x00b"), nil, "name", "name: contains the control character U+0000")
	h.invalid("GET", "/v1/audit?target="+url.QueryEscape("\x00"), nil, "target", "target: contains the control character U+0000")
	h.invalid("GET", "/v1/keys/"+url.PathEscape("key_\x00"), nil, "id", "id: contains the control character U+0000")
	h.invalid("GET", "/v1/budgets?subject="+url.QueryEscape("team:a\x00"), nil, "subject", "subject: contains the control character U+0000")
	// Ordinary non-ASCII text is fine.
	h.admin("POST", "/v1/keys", `{"name":"Jörg's key – 研究","subjects":["team:ml"]}`, http.StatusCreated)
}
