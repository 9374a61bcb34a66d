package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
)

func tokensCommand() command {
	return group("manage admin tokens (list, create, revoke); admins only", map[string]command{
		"list":   leaf("list every admin token (no secrets)", runTokensList),
		"create": leaf("issue an admin token and print its secret once", runTokensCreate),
		"revoke": leaf("revoke an admin token", runTokensRevoke),
	})
}

func runTokensList(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("tokens list", e)
	if _, err := f.parse(args, 0, 0, "[-o json]"); err != nil {
		return err
	}
	var ts []admin.Token
	if printed, err := f.list(ctx, e, "/v1/tokens", nil, "tokens", &ts); printed || err != nil {
		return err
	}
	tw := newTable(e.stdout)
	fmt.Fprintln(tw, "ID\tNAME\tPREFIX\tROLE\tSCOPE\tSTATE\tEXPIRES\tCREATED BY\tCREATED")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Prefix, t.Role, orDash(strings.Join(t.Scope, ",")),
			t.State, when(t.ExpiresAt), t.CreatedBy, t.CreatedAt.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func runTokensCreate(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("tokens create", e)
	name := f.FlagSet.String("name", "", "token name (required)")
	role := f.FlagSet.String("role", "", "admin, manager or viewer (required)")
	var scope listFlag
	f.Var(&scope, "scope", "a manager's subject: team:ml (and team:ml/...), or a prefix such as user:* (repeat or comma separate)")
	expires := f.FlagSet.String("expires", "", "expiry: RFC 3339 time, date, or duration from now (720h)")
	if _, err := f.parse(args, 0, 0, "-name NAME -role admin|manager|viewer [-scope S]... [-expires WHEN]"); err != nil {
		return err
	}
	body := map[string]any{"name": *name, "role": *role, "scope": orEmpty(scope)}
	if *expires != "" {
		t, err := parseWhen("expires", *expires, time.Now())
		if err != nil {
			return err
		}
		body["expires_at"] = t
	}
	var t admin.Token
	if printed, err := f.call(ctx, e, "POST", "/v1/tokens", nil, body, &t); printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "created %s token %s (%s)\nsecret (shown once, store it now): %s\n", t.Role, t.ID, t.Name, t.Token)
	return nil
}

func runTokensRevoke(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("tokens revoke", e)
	pos, err := f.parse(args, 1, 1, "TOKEN_ID")
	if err != nil {
		return err
	}
	var t admin.Token
	if printed, err := f.call(ctx, e, "DELETE", "/v1/tokens/"+url.PathEscape(pos[0]), nil, nil, &t); printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "revoked token %s (%s)\n", t.ID, t.Name)
	return nil
}
