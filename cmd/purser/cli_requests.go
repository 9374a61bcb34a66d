package main

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/admin"
)

func requestsCommand() command {
	return leaf("list per-request records (holds, charges, outcomes), or export them as CSV or JSON lines", runRequests)
}

func runRequests(ctx context.Context, e env, args []string) error {
	f := newCLIFlags("requests", e)
	f.exports = []string{"csv", "jsonl"}
	subject := f.FlagSet.String("subject", "", "only requests that carried this subject")
	key := f.FlagSet.String("key", "", "only this key's requests (key id)")
	model := f.FlagSet.String("model", "", "only this model")
	state := f.FlagSet.String("state", "", "pending, settled, voided or expired")
	from := f.FlagSet.String("from", "", "created at or after: RFC 3339 time or date")
	to := f.FlagSet.String("to", "", "created before: RFC 3339 time (exclusive) or date (inclusive)")
	before := f.FlagSet.String("before", "", "only records older than this reservation id (paging)")
	limit := f.FlagSet.Int("limit", 50, "at most this many records (1-1000; -o csv and jsonl export every record)")
	if _, err := f.parse(args, 0, 0, "[-subject S] [-key ID] [-model M] [-state S] [-from T] [-to T] [-limit N] [-o table|json|csv|jsonl]"); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"subject": *subject, "key": *key, "model": *model, "state": *state, "from": *from, "to": *to, "before": *before} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *f.output == "csv" || *f.output == "jsonl" {
		c, err := f.client()
		if err != nil {
			return err
		}
		q.Set("format", *f.output)
		return c.stream(ctx, "/v1/requests", q, e.stdout)
	}
	q.Set("limit", strconv.Itoa(*limit))
	var out struct {
		Requests   []admin.Request `json:"requests"`
		NextBefore *string         `json:"next_before"`
	}
	if printed, err := f.call(ctx, e, "GET", "/v1/requests", q, nil, &out); printed || err != nil {
		return err
	}
	tw := newTable(e.stdout)
	fmt.Fprintln(tw, "CREATED\tID\tSTATE\tCAUSE\tKEY\tMODEL\tHOLD USD\tCOST USD\tTOKENS\tSUBJECTS")
	for _, r := range out.Requests {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.CreatedAt.UTC().Format(time.RFC3339), r.ID, r.State,
			orDash(deref(r.Cause)), orDash(deref(r.KeyID)), orDash(r.Model), r.HoldCost, orDash(deref(r.ActualCost)),
			orDash(deref(r.ActualTokens)), orDash(strings.Join(r.Subjects, ",")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if out.NextBefore != nil {
		fmt.Fprintf(e.stdout, "more: purser requests -before %s (same filters)\n", *out.NextBefore)
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
