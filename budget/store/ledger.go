package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ReserveBatch is the column-wise input of purser_reserve (see migrations/002). Requests are
// in arrival order; Windows are distinct and sorted by (BudgetID, Start); hold lines are
// grouped by request and point into Windows (0-based here, converted to SQL's 1-based).
type ReserveBatch struct {
	Requests []ReserveRequestRow
	Windows  []WindowKey
	Lines    []HoldLine
}

// ReserveRequestRow is one request of a batch.
type ReserveRequestRow struct {
	ID             string // uuid
	IdempotencyKey []byte // nil: not idempotent
	TTL            time.Duration
	KeyID          string
	Subjects       []string
	Provider       string
	Flavor         string
	Model          string
	Route          string
	RequestID      string
	HoldCost       int64
	HoldTokens     int64
	FirstLine      int // index into Lines, meaningful when LineCount > 0
	LineCount      int
}

// WindowKey names one window counter row.
type WindowKey struct {
	BudgetID int64
	Start    time.Time
	End      time.Time
	RollFrom *time.Time // rolling budgets: earliest bucket start counted in the window
}

// HoldLine is what one request holds on one window.
type HoldLine struct {
	Window int // index into Windows
	Amount int64
	Hard   bool
	Unit   HoldUnit // what the budget counts: settlement charges the hold in it
}

// HoldUnit is what a hold counts. It is stored in reservation_holds.tokens_unit: false for
// money, true for tokens, NULL for requests (see migrations/007: purser_settle charges a
// requests hold its amount, 1, whatever the usage).
type HoldUnit uint8

// Hold units.
const (
	HoldMoney HoldUnit = iota
	HoldTokens
	HoldRequests
)

// column is the hold unit as the tokens_unit column stores it (nil: NULL).
func (u HoldUnit) column() *bool {
	switch u {
	case HoldTokens:
		return &holdTrue
	case HoldRequests:
		return nil
	}
	return &holdFalse
}

var holdTrue, holdFalse = true, false

// ReserveStatus is a request's fate in a batch (purser_reserve's out_status codes).
type ReserveStatus int32

// Reserve statuses.
const (
	StatusDenied    ReserveStatus = 0
	StatusAdmitted  ReserveStatus = 1
	StatusDuplicate ReserveStatus = 2 // reserved before under its idempotency key
)

// ReserveResult is purser_reserve's answer, aligned with the batch.
type ReserveResult struct {
	Status        []ReserveStatus // per request
	ReservationID []string        // per request: the new or first reservation id ("" when denied)
	DenyLine      []int           // per request: index of the hold line that did not fit, -1 otherwise
	LineLimit     []*int64        // per line: effective limit (nil: budget deleted, not enforced)
	LineUsed      []int64         // per line: posted + pending as the request left it
}

// Reserve runs one batch in one round trip (autocommit: the function's transaction commits
// with the statement, so row locks are held only while it runs).
func (s *Store) Reserve(ctx context.Context, b ReserveBatch) (ReserveResult, error) {
	n := len(b.Requests)
	ids, subjects := make([]string, n), make([]string, n)
	providers, flavors, models, routes := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	keyIDs, reqIDs := make([]*string, n), make([]*string, n)
	idem := make([][]byte, n)
	ttl, holdCost, holdTokens := make([]int64, n), make([]int64, n), make([]int64, n)
	first, count := make([]int32, n), make([]int32, n)
	for i, r := range b.Requests {
		ids[i] = r.ID
		idem[i] = r.IdempotencyKey
		ttl[i] = r.TTL.Milliseconds()
		keyIDs[i] = nullable(r.KeyID)
		subjects[i] = joinSubjects(r.Subjects)
		providers[i], flavors[i], models[i], routes[i] = r.Provider, r.Flavor, r.Model, r.Route
		reqIDs[i] = nullable(r.RequestID)
		holdCost[i], holdTokens[i] = r.HoldCost, r.HoldTokens
		if r.LineCount > 0 {
			first[i] = int32(r.FirstLine + 1)
		}
		count[i] = int32(r.LineCount)
	}
	nw := len(b.Windows)
	wBudget, wStart, wEnd, wRoll := make([]int64, nw), make([]time.Time, nw), make([]time.Time, nw), make([]*time.Time, nw)
	for i, w := range b.Windows {
		wBudget[i], wStart[i], wEnd[i], wRoll[i] = w.BudgetID, w.Start, w.End, w.RollFrom
	}
	hReq, hWin, hAmt, hHard, hTok := lineArrays(b.Requests, b.Lines)

	var (
		res    ReserveResult
		status []int32
		deny   []int32
		resid  []*string
	)
	call := func(checkIdem bool) error {
		return s.hotRow(ctx, `SELECT out_status, out_reservation_id::text[], out_deny_line, out_line_limit, out_line_used FROM purser_reserve(
		r_id => @r_id::uuid[], r_idem => @r_idem, r_ttl_ms => @r_ttl_ms, r_key_id => @r_key_id,
		r_subjects => @r_subjects, r_provider => @r_provider, r_flavor => @r_flavor, r_model => @r_model,
		r_route => @r_route, r_request_id => @r_request_id, r_hold_cost => @r_hold_cost,
		r_hold_tokens => @r_hold_tokens, r_first => @r_first, r_count => @r_count,
		w_budget => @w_budget, w_start => @w_start, w_end => @w_end, w_roll_from => @w_roll_from,
		h_req => @h_req, h_window => @h_window, h_amount => @h_amount, h_hard => @h_hard, h_tokens => @h_tokens,
		p_check_idem => @p_check_idem)`,
			// int64s, int32s, texts, byteas: the same arrays, encoded without an allocation
			// per element (arrays.go).
			pgx.StrictNamedArgs{
				"r_id": ids, "r_idem": byteas(idem), "r_ttl_ms": int64s(ttl), "r_key_id": keyIDs,
				"r_subjects": texts(subjects), "r_provider": texts(providers), "r_flavor": texts(flavors), "r_model": texts(models),
				"r_route": texts(routes), "r_request_id": reqIDs, "r_hold_cost": int64s(holdCost),
				"r_hold_tokens": int64s(holdTokens), "r_first": int32s(first), "r_count": int32s(count),
				"w_budget": int64s(wBudget), "w_start": wStart, "w_end": wEnd, "w_roll_from": wRoll,
				"h_req": int32s(hReq), "h_window": int32s(hWin), "h_amount": int64s(hAmt), "h_hard": hHard, "h_tokens": hTok,
				"p_check_idem": checkIdem,
			},
		).Scan(&status, &resid, &deny, &res.LineLimit, &res.LineUsed)
	}
	// Repeated idempotency keys are rare: the first attempt skips looking them up and the
	// function reports one with PU001 (nothing was written), then the batch runs again with
	// the lookup.
	err := call(false)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "PU001" {
		err = call(true)
	}
	if err != nil {
		return ReserveResult{}, fmt.Errorf("reserve batch of %d: %w", n, interpret(err))
	}
	res.Status = make([]ReserveStatus, n)
	res.ReservationID = make([]string, n)
	res.DenyLine = make([]int, n)
	for i := range n {
		res.Status[i] = ReserveStatus(status[i])
		if resid[i] != nil {
			res.ReservationID[i] = *resid[i]
		}
		res.DenyLine[i] = int(deny[i]) - 1
	}
	return res, nil
}

// lineArrays turns hold lines into SQL's column arrays (1-based request and window indices).
// firstLine/lineCount give each request's lines.
func lineArrays[R interface{ lines() (int, int) }](reqs []R, lines []HoldLine) (req, win []int32, amount []int64, hard []bool, tokens []*bool) {
	nh := len(lines)
	req, win, amount, hard, tokens = make([]int32, nh), make([]int32, nh), make([]int64, nh), make([]bool, nh), make([]*bool, nh)
	for i, r := range reqs {
		first, count := r.lines()
		for j := first; j < first+count; j++ {
			req[j] = int32(i + 1)
		}
	}
	for i, l := range lines {
		win[i], amount[i], hard[i], tokens[i] = int32(l.Window+1), l.Amount, l.Hard, l.Unit.column()
	}
	return req, win, amount, hard, tokens
}

func (r ReserveRequestRow) lines() (int, int) { return r.FirstLine, r.LineCount }
func (r UnreservedRow) lines() (int, int)     { return r.FirstLine, r.LineCount }

// SettleRow is one resolution for purser_settle.
type SettleRow struct {
	ReservationID string
	Void          bool
	// Tentative (with Void): void only if no repeated Check was answered with the reservation.
	Tentative bool
	// ChargeHold charges the full hold (usage unknown); Cost and Tokens are ignored.
	ChargeHold     bool
	Cost           int64 // micro-USD actually spent
	Tokens         int64 // tokens actually used
	Usage          json.RawMessage
	CatalogVersion string
	Cause          string
}

// SettleOutcome reports what happened to one reservation.
type SettleOutcome struct {
	ReservationID string
	// Outcome is settled | voided | late_settled | late_voided | duplicate | unknown.
	Outcome string
	// Overrun: the settled amount exceeded the hold (charged in full, recorded).
	Overrun bool
}

// Settle resolves a batch in one round trip. Duplicate ids within the batch keep the first.
func (s *Store) Settle(ctx context.Context, rows []SettleRow) ([]SettleOutcome, error) {
	n := len(rows)
	ids, cats, causes := make([]string, n), make([]string, n), make([]string, n)
	voids, tentative, holds := make([]bool, n), make([]bool, n), make([]bool, n)
	costs, tokens := make([]int64, n), make([]int64, n)
	usages := make([][]byte, n)
	for i, r := range rows {
		ids[i], voids[i], tentative[i], holds[i] = r.ReservationID, r.Void, r.Tentative, r.ChargeHold
		costs[i], tokens[i], cats[i], causes[i] = r.Cost, r.Tokens, r.CatalogVersion, r.Cause
		if len(r.Usage) > 0 {
			usages[i] = r.Usage
		}
	}
	out := make([]SettleOutcome, 0, n)
	q, err := s.hotQuery(ctx, `SELECT out_id::text, out_outcome, out_overrun FROM purser_settle(
		s_id => @s_id::uuid[], s_void => @s_void, s_tentative => @s_tentative, s_hold => @s_hold,
		s_cost => @s_cost, s_tokens => @s_tokens, s_usage => @s_usage::jsonb[], s_catalog => @s_catalog,
		s_cause => @s_cause)`,
		pgx.StrictNamedArgs{
			"s_id": ids, "s_void": voids, "s_tentative": tentative, "s_hold": holds,
			"s_cost": int64s(costs), "s_tokens": int64s(tokens), "s_usage": usages, "s_catalog": texts(cats),
			"s_cause": texts(causes), // int64s, texts: no allocation per element (arrays.go)
		})
	if err != nil {
		return nil, fmt.Errorf("settle batch of %d: %w", n, interpret(err))
	}
	defer q.Close()
	for q.Next() {
		var o SettleOutcome
		var overrun *bool
		if err := q.Scan(&o.ReservationID, &o.Outcome, &overrun); err != nil {
			return nil, fmt.Errorf("settle batch of %d: %w", n, interpret(err))
		}
		o.Overrun = overrun != nil && *overrun
		out = append(out, o)
	}
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("settle batch of %d: %w", n, interpret(err))
	}
	return out, nil
}

// ChargeProvisional charges pending reservations their hold as expiry does (state expired, so
// a later entry still settles them), with each row's cause; others are duplicates or unknown.
func (s *Store) ChargeProvisional(ctx context.Context, rows []SettleRow) ([]SettleOutcome, error) {
	ids, causes := make([]string, len(rows)), make([]string, len(rows))
	for i, r := range rows {
		ids[i], causes[i] = r.ReservationID, r.Cause
	}
	q, err := s.pool.Query(ctx, `SELECT out_id::text, out_outcome FROM purser_charge_provisional(p_ids => @p_ids::uuid[], p_causes => @p_causes)`,
		pgx.StrictNamedArgs{"p_ids": ids, "p_causes": causes})
	if err != nil {
		return nil, fmt.Errorf("provisional charge of %d: %w", len(rows), interpret(err))
	}
	out, err := pgx.CollectRows(q, func(r pgx.CollectableRow) (SettleOutcome, error) {
		var o SettleOutcome
		err := r.Scan(&o.ReservationID, &o.Outcome)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("provisional charge of %d: %w", len(rows), interpret(err))
	}
	return out, nil
}

// Expire charges up to limit overdue pending reservations in full; it returns how many.
func (s *Store) Expire(ctx context.Context, limit int) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT purser_expire(p_limit => @p_limit)`, pgx.StrictNamedArgs{"p_limit": limit}).Scan(&n); err != nil {
		return 0, fmt.Errorf("expire: %w", interpret(err))
	}
	return n, nil
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// joinSubjects packs a request's subjects into one text value (split again in SQL).
func joinSubjects(ss []string) string { return strings.Join(ss, "\n") }

// UnreservedRow is spend recorded without a reservation; its lines (in the batch) charge
// the windows.
type UnreservedRow struct {
	ID             string
	IdempotencyKey []byte
	KeyID          string
	Subjects       []string
	Provider       string
	Flavor         string
	Model          string
	Route          string
	RequestID      string
	Cost           int64
	Tokens         int64
	Usage          []byte
	CatalogVersion string
	At             time.Time
	FirstLine      int
	LineCount      int
}

// UnreservedBatch is the column-wise input of purser_record_unreserved.
type UnreservedBatch struct {
	Rows    []UnreservedRow
	Windows []WindowKey // distinct, sorted by (BudgetID, Start); RollFrom unused
	Lines   []HoldLine  // Amount is the charge
}

// RecordUnreserved stores the batch in one round trip and returns the ids actually recorded
// (replays of an idempotency key are skipped).
func (s *Store) RecordUnreserved(ctx context.Context, b UnreservedBatch) ([]string, error) {
	n := len(b.Rows)
	ids, subjects, providers, flavors, models, routes, cats := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	keyIDs, reqIDs := make([]*string, n), make([]*string, n)
	idem, usages := make([][]byte, n), make([][]byte, n)
	costs, tokens := make([]int64, n), make([]int64, n)
	at := make([]time.Time, n)
	for i, r := range b.Rows {
		ids[i], subjects[i], providers[i], flavors[i], models[i], routes[i], cats[i] = r.ID, joinSubjects(r.Subjects), r.Provider, r.Flavor, r.Model, r.Route, r.CatalogVersion
		keyIDs[i], reqIDs[i] = nullable(r.KeyID), nullable(r.RequestID)
		idem[i], usages[i] = r.IdempotencyKey, r.Usage
		costs[i], tokens[i], at[i] = r.Cost, r.Tokens, r.At
	}
	nw := len(b.Windows)
	wBudget, wStart, wEnd := make([]int64, nw), make([]time.Time, nw), make([]time.Time, nw)
	for i, w := range b.Windows {
		wBudget[i], wStart[i], wEnd[i] = w.BudgetID, w.Start, w.End
	}
	hReq, hWin, hAmt, _, hTok := lineArrays(b.Rows, b.Lines)
	var recorded []string
	err := s.pool.QueryRow(ctx, `SELECT out_recorded::text[] FROM purser_record_unreserved(
		r_id => @r_id::uuid[], r_idem => @r_idem, r_key_id => @r_key_id, r_subjects => @r_subjects,
		r_provider => @r_provider, r_flavor => @r_flavor, r_model => @r_model, r_route => @r_route,
		r_request_id => @r_request_id, r_cost => @r_cost, r_tokens => @r_tokens, r_usage => @r_usage::jsonb[],
		r_catalog => @r_catalog, r_at => @r_at, w_budget => @w_budget, w_start => @w_start, w_end => @w_end,
		h_req => @h_req, h_window => @h_window, h_amount => @h_amount, h_tokens => @h_tokens)`,
		pgx.StrictNamedArgs{
			"r_id": ids, "r_idem": idem, "r_key_id": keyIDs, "r_subjects": subjects,
			"r_provider": providers, "r_flavor": flavors, "r_model": models, "r_route": routes,
			"r_request_id": reqIDs, "r_cost": costs, "r_tokens": tokens, "r_usage": usages,
			"r_catalog": cats, "r_at": at, "w_budget": wBudget, "w_start": wStart, "w_end": wEnd,
			"h_req": hReq, "h_window": hWin, "h_amount": hAmt, "h_tokens": hTok,
		}).Scan(&recorded)
	if err != nil {
		return nil, fmt.Errorf("record unreserved spend (%d): %w", n, interpret(err))
	}
	return recorded, nil
}
