package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/purser-dev/purser/admin"
)

func keysCommand() command {
	return group("manage API keys (list, create, revoke, rotate)", map[string]command{
		"list":   leaf("list every key (no secrets)", runKeysList),
		"create": leaf("issue a key and print its secret once", runKeysCreate),
		"revoke": leaf("revoke a key", runKeysRevoke),
		"rotate": leaf("give a key a new secret (printed once)", runKeysRotate),
	})
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func runKeysList(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("keys list", e)
	subject := f.FlagSet.String("subject", "", "only the keys owning this subject")
	name := f.FlagSet.String("name", "", "only the keys of this name")
	if _, err := f.parse(args, 0, 0, "[-subject S] [-name NAME] [-o json]"); err != nil {
		return err
	}
	q := url.Values{}
	if *subject != "" {
		q.Set("subject", *subject)
	}
	if *name != "" {
		q.Set("name", *name)
	}
	var keys []admin.Key
	if printed, err := f.list(ctx, e, "/v1/keys", q, "keys", &keys); printed || err != nil {
		return err
	}
	tw := newTable(e.stdout)
	fmt.Fprintln(tw, "ID\tNAME\tPREFIX\tSTATE\tSUBJECTS\tMODELS\tEXPIRES\tCREATED")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Prefix, k.State, orDash(strings.Join(k.Subjects, ",")),
			orDash(strings.Join(k.AllowedModels, ",")), when(k.ExpiresAt), k.CreatedAt.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func runKeysCreate(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("keys create", e)
	name := f.FlagSet.String("name", "", "key name (required)")
	var subjects, models listFlag
	f.Var(&subjects, "subject", "owner subject, e.g. team:ml (repeat or comma separate)")
	f.Var(&models, "model", "allowed model glob, e.g. 'gpt-4o*' (repeat; none: any model)")
	expires := f.FlagSet.String("expires", "", "expiry: RFC 3339 time, date, or duration from now (720h)")
	if _, err := f.parse(args, 0, 0, "-name NAME [-subject S]... [-model GLOB]... [-expires WHEN]"); err != nil {
		return err
	}
	body := map[string]any{"name": *name, "subjects": orEmpty(subjects), "allowed_models": orEmpty(models)}
	if *expires != "" {
		t, err := parseWhen("expires", *expires, time.Now())
		if err != nil {
			return err
		}
		body["expires_at"] = t
	}
	var k admin.Key
	if printed, err := f.call(ctx, e, "POST", "/v1/keys", nil, body, &k); printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "created key %s (%s)\nsecret (shown once, store it now): %s\n", k.ID, k.Name, k.Key)
	return nil
}

func runKeysRevoke(ctx context.Context, e env, args []string) error {
	k, printed, err := keyCall(ctx, e, "keys revoke", "DELETE", "", args)
	if printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "revoked key %s (%s)\n", k.ID, k.Name)
	return nil
}

func runKeysRotate(ctx context.Context, e env, args []string) error {
	k, printed, err := keyCall(ctx, e, "keys rotate", "POST", "/rotate", args)
	if printed || err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "rotated key %s (%s); the old secret no longer works\nnew secret (shown once, store it now): %s\n", k.ID, k.Name, k.Key)
	return nil
}

// keyCall runs `purser <name> KEY_ID`: method on /v1/keys/KEY_ID plus suffix.
func keyCall(ctx context.Context, e env, name, method, suffix string, args []string) (admin.Key, bool, error) {
	f := newCLIFlags(name, e)
	pos, err := f.parse(args, 1, 1, "KEY_ID")
	if err != nil {
		return admin.Key{}, false, err
	}
	var k admin.Key
	printed, err := f.call(ctx, e, method, "/v1/keys/"+url.PathEscape(pos[0])+suffix, nil, nil, &k)
	return k, printed, err
}
