package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/budget"
)

func TestCLI_Tokens(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	out := h.ok("tokens", "create", "-name", "ml lead", "-role", "manager", "-scope", "team:ml,user:*")
	m := regexp.MustCompile(`^created manager token (tok_[a-z2-7]{16}) \(ml lead\)\nsecret \(shown once, store it now\): (pt_[0-9A-Za-z]+)\n$`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	id, secret := m[1], m[2]

	// The new token is a manager of team:ml: it lists and creates within its scope only.
	vars := map[string]string{"PURSER_ADDR": h.url, "PURSER_ADMIN_TOKEN": secret}
	asManager := func(args ...string) (string, error) {
		var o, e bytes.Buffer
		err := run(context.Background(), args, func(k string) string { return vars[k] }, strings.NewReader(""), &o, &e)
		return o.String(), err
	}
	_, err := asManager("budgets", "create", "-name", "nlp", "-subject", "team:ml/nlp", "-limit", "5", "-window", "month")
	require.NoError(t, err)
	_, err = asManager("budgets", "create", "-name", "web", "-subject", "team:web", "-limit", "5", "-window", "month")
	require.EqualError(t, err, "subject team:web is outside your scope (team:ml, user:*)")
	_, err = asManager("tokens", "list")
	require.EqualError(t, err, "a manager token cannot call GET /v1/tokens")

	out = h.ok("tokens", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2)
	require.Regexp(t, `^ID\s+NAME\s+PREFIX\s+ROLE\s+SCOPE\s+STATE\s+EXPIRES\s+CREATED BY\s+CREATED$`, lines[0])
	require.Regexp(t, `^`+id+`\s+ml lead\s+`+secret[:11]+`\s+manager\s+team:ml,user:\*\s+active\s+never\s+admin:\w{6}\s+\S+Z$`, lines[1])
	require.NotContains(t, out, secret)

	require.Equal(t, "revoked token "+id+" (ml lead)\n", h.ok("tokens", "revoke", id))
	_, err = asManager("budgets", "list")
	require.EqualError(t, err, "admin token revoked")
	_, err = h.cli("", "tokens", "create", "-name", "x", "-role", "viewer", "-scope", "team:ml")
	require.EqualError(t, err, "scope: only a manager has a scope")
}

func TestCLI_Requests(t *testing.T) {
	t.Parallel()
	h := newCLIHarness(t)
	ctx := context.Background()
	k, _, err := h.svc.CreateKey(ctx, "t", budget.KeySpec{Name: "k", Subjects: []string{"team:ml"}})
	require.NoError(t, err)
	for i := range 5 {
		d, err := h.svc.Reserve(ctx, []budget.ReserveRequest{{Subjects: k.AllSubjects(), KeyID: k.ID, Cost: 2000, Tokens: 30,
			Target: budget.Target{Model: "gpt-4o"}, RequestID: fmt.Sprint("r", i)}})
		require.NoError(t, err)
		if i < 3 {
			_, err = h.svc.Settle(ctx, []budget.Settlement{{ReservationID: d[0].ReservationID, Cost: 1500, Tokens: 20, Cause: "usage"}})
			require.NoError(t, err)
		}
	}
	out := h.ok("requests", "-limit", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, out)
	require.Regexp(t, `^CREATED\s+ID\s+STATE\s+CAUSE\s+KEY\s+MODEL\s+HOLD USD\s+COST USD\s+TOKENS\s+SUBJECTS$`, lines[0])
	require.Regexp(t, `^\S+Z\s+\S+\s+pending\s+-\s+`+k.ID+`\s+gpt-4o\s+0.002000\s+-\s+-\s+key:`+k.ID+`,team:ml$`, lines[1])
	require.Regexp(t, `^more: purser requests -before [0-9a-f-]{36} \(same filters\)$`, lines[3])

	out = h.ok("requests", "-state", "settled", "-o", "json")
	var page struct {
		Requests []map[string]any `json:"requests"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &page))
	require.Len(t, page.Requests, 3)
	require.Equal(t, "0.001500", page.Requests[0]["actual_cost"])

	out = h.ok("requests", "-o", "csv", "-key", k.ID)
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	require.NoError(t, err)
	require.Len(t, rows, 6, "a header and five records")
	require.Equal(t, "r4", rows[1][9])
	out = h.ok("requests", "-o", "jsonl", "-state", "pending")
	require.Len(t, strings.Split(strings.TrimSpace(out), "\n"), 2)
	_, err = h.cli("", "requests", "-o", "csv", "-state", "done")
	require.EqualError(t, err, `state: must be pending, settled, voided or expired, got "done"`)
	_, err = h.cli("", "requests", "-o", "xml")
	require.EqualError(t, err, `-o "xml": want table, json, csv, jsonl`)
}
