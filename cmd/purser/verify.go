package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
)

func runVerify(ctx context.Context, e env, args []string) error {
	f := newFlags("verify", e)
	dsn := databaseFlag(f)
	if err := f.Parse(args); err != nil {
		return err
	}
	svc, closeLedger, err := openLedger(ctx, *dsn)
	if err != nil {
		return err
	}
	defer closeLedger()
	rep, err := svc.Verify(ctx)
	if err != nil {
		return err
	}
	for _, m := range rep.Mismatches {
		fmt.Fprintf(e.stdout, "MISMATCH budget %d window %s: counters posted=%d pending=%d, holds posted=%d pending=%d, bad holds=%d, orphan holds=%d, window row missing=%t\n",
			m.BudgetID, m.WindowStart.Format("2006-01-02T15:04:05Z07:00"), m.Posted, m.Pending, m.HeldPosted, m.HeldPending, m.BadHolds, m.OrphanHolds, m.MissingCount)
	}
	for _, o := range rep.OverLimit {
		verdict := "explained by recorded overruns / unreserved spend"
		if budget.Unexplained(o) {
			verdict = "UNEXPLAINED (was the limit lowered? see the audit log)"
		}
		fmt.Fprintf(e.stdout, "over limit: budget %d window %s: posted=%d pending=%d limit=%d overrun=%d: %s\n",
			o.BudgetID, o.WindowStart.Format("2006-01-02T15:04:05Z07:00"), o.Posted, o.Pending, o.Limit, o.Overrun, verdict)
	}
	if !rep.Clean() {
		return exitError{code: 1, msg: fmt.Sprintf("ledger does not reconcile: %d mismatches, %d windows over limit", len(rep.Mismatches), len(rep.OverLimit))}
	}
	fmt.Fprintln(e.stdout, "ledger reconciles: every window's posted and pending equal the sum of its holds")
	return nil
}

// runCost prices JSON lines (pricing.RunCost): one JSON line per input line on stdout, in
// order. A line that cannot be priced is {"error": ...} on stdout (so output lines stay aligned
// with input lines), reported on stderr too, and makes the exit status 1.
func runCost(ctx context.Context, e env, args []string) error {
	f := newFlags("cost", e)
	f.synopsis = "[-prices FILE] < responses.jsonl"
	prices := f.String("prices", "PURSER_PRICES", "", "price override file (YAML or JSON)")
	if err := f.Parse(args); err != nil {
		return err
	}
	cat, err := loadCatalog(*prices)
	if err != nil {
		return err
	}
	out := &costOutput{w: e.stdout, errw: e.stderr}
	if err := pricing.RunCost(ctx, cat, e.stdin, out); err != nil {
		return err
	}
	if out.failed > 0 {
		return exitError{code: 1, msg: fmt.Sprintf("cost: %d of %d lines could not be priced", out.failed, out.lines)}
	}
	return nil
}

// costOutput passes RunCost's output through and reports its error lines on errw.
type costOutput struct {
	w, errw       io.Writer
	line          []byte // the start of the current line, while it may be an error line
	skip          bool   // the current line is a priced result: pass it through
	lines, failed int
}

var costErrorPrefix = []byte(`{"error":`)

func (c *costOutput) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	for rest := p[:n]; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		chunk := rest
		if i >= 0 {
			chunk = rest[:i]
		}
		if !c.skip {
			c.line = append(c.line, chunk...)
			k := min(len(c.line), len(costErrorPrefix))
			c.skip = !bytes.Equal(c.line[:k], costErrorPrefix[:k])
		}
		if i < 0 {
			break
		}
		c.endLine()
		rest = rest[i+1:]
	}
	return n, err
}

func (c *costOutput) endLine() {
	c.lines++
	if !c.skip && bytes.HasPrefix(c.line, costErrorPrefix) {
		var e struct {
			Error string `json:"error"`
		}
		msg := string(c.line)
		if json.Unmarshal(c.line, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		c.failed++
		fmt.Fprintln(c.errw, "purser cost:", msg)
	}
	c.line, c.skip = c.line[:0], false
}
