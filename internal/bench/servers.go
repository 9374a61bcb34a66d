package bench

import (
	"context"
	"errors"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/extauthz/request"
	"github.com/purser-dev/purser/grpccodec"
)

// NewGRPCServer returns a gRPC server with the options `purser serve` uses on its Envoy
// port (receive limit, stream cap, purser's codec), so the baselines pay the same transport
// and decoding costs as purser.
func NewGRPCServer() (*grpc.Server, error) {
	codec, err := grpccodec.ServerOption()
	if err != nil {
		return nil, err
	}
	return grpc.NewServer(grpc.MaxRecvMsgSize(8<<20+1<<20), grpc.MaxConcurrentStreams(1024), codec), nil
}

// clientCodec makes the load generator encode with purser's codec (go-control-plane's
// generated marshallers), as cheap as the generator can be: it shares the cores with the
// server it measures. Envoy, the real client, runs elsewhere.
func clientCodec() (grpc.DialOption, error) {
	c, err := grpccodec.New()
	if err != nil {
		return nil, err
	}
	return grpc.WithDefaultCallOptions(grpc.ForceCodecV2(wireCodec{c})), nil
}

// Serve registers auth on a new server listening on 127.0.0.1:0 and serves it until stop
// is called.
func Serve(auth authv3.AuthorizationServer) (addr string, stop func(), err error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	gs, err := NewGRPCServer()
	if err != nil {
		return "", nil, err
	}
	authv3.RegisterAuthorizationServer(gs, auth)
	go func() { _ = gs.Serve(lis) }()
	return lis.Addr().String(), gs.Stop, nil
}

// AllowAll answers OK to every Check without looking at it: the ceiling of the gRPC path.
type AllowAll struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{
	Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

// Check implements authv3.AuthorizationServer.
func (AllowAll) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// Original is the original service's admission strategy as an Authorization server: per
// request one transaction that locks the window row of each applicable budget with
// SELECT ... FOR UPDATE, checks posted + pending + amount <= limit, adds the hold to pending,
// inserts the reservation and its holds, and commits. Everything around it is purser's: the
// same parser (request.Parse), key lookup (budget.Service.Authenticate with its cache), price
// catalog and worst-case bound, and the same schema, so that only the admission strategy
// differs. Budget definitions are cached per subject, as purser caches them.
//
// Lock order: the original locked rows in query order (which can deadlock when two requests
// share two budgets in opposite orders); this one locks in budget-id order. In the bench
// every request has exactly one applicable budget, so the order changes nothing measured.
type Original struct {
	authv3.UnimplementedAuthorizationServer
	Pool    *pgxpool.Pool
	Svc     *budget.Service
	Catalog *pricing.Catalog
	TTL     time.Duration

	budgets sync.Map // budget.Subject -> []budget.Budget
}

// Check implements authv3.AuthorizationServer.
func (o *Original) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	r := request.Parse(req, nil)
	var key *budget.Key
	for _, c := range r.Credentials {
		if !strings.HasPrefix(c.Secret, budget.SecretPrefix) {
			continue
		}
		k, err := o.Svc.Authenticate(ctx, c.Secret)
		if err != nil {
			if errors.Is(err, budget.ErrKeyUnknown) || errors.Is(err, budget.ErrKeyRevoked) || errors.Is(err, budget.ErrKeyExpired) {
				return denied(401, "invalid_api_key"), nil
			}
			return nil, status.Error(codes.Unavailable, "key lookup failed")
		}
		key = k
		break
	}
	if key == nil {
		return denied(401, "missing_api_key"), nil
	}
	if !r.Billable {
		return okResponse, nil
	}
	cost, tokens, ok := o.bound(&r)
	if !ok {
		return denied(400, "cannot_bound"), nil
	}
	subjects := key.AllSubjects()
	for _, raw := range r.Subjects {
		if s, err := budget.ParseSubject(raw); err == nil {
			subjects = append(subjects, s)
		}
	}
	subjects = append(subjects, budget.Global)
	target := budget.Target{Model: r.Model, Path: r.Path, Route: r.Route.Raw}
	var applicable []budget.Budget
	for _, s := range subjects {
		bs, err := o.budgetsOf(ctx, s)
		if err != nil {
			return nil, status.Error(codes.Unavailable, "budget lookup failed")
		}
		for i := range bs {
			if bs[i].Applies(target) {
				applicable = append(applicable, bs[i])
			}
		}
	}
	sort.Slice(applicable, func(i, j int) bool { return applicable[i].ID < applicable[j].ID })
	id, err := uuid.NewV7()
	if err != nil {
		return nil, status.Error(codes.Internal, "uuid")
	}
	admitted, err := o.reserve(ctx, id.String(), key, subjects, &r, cost, tokens, applicable)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "reserve failed: "+err.Error())
	}
	if !admitted {
		return denied(429, "budget_exceeded"), nil
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			"purser_decision": structpb.NewStringValue("reserved"),
			"reservation_id":  structpb.NewStringValue(id.String()),
			"reserved_micros": structpb.NewStringValue(strconv.FormatInt(cost, 10)),
		}},
	}, nil
}

// bound is purser's worst case: input estimate (the context window when the request pulls
// input from elsewhere) plus the output cap (default 4096) at the highest prices.
func (o *Original) bound(r *request.Request) (cost, tokens int64, ok bool) {
	if r.BodyError != nil || r.CapError != nil || r.Model == "" {
		return 0, 0, false
	}
	m, found := o.Catalog.Lookup(r.Provider, r.Model)
	if !found {
		return 0, 0, false
	}
	input := r.InputTokens
	if r.ExternalInput {
		input = m.ContextWindow
		if input == 0 {
			input = max(r.InputTokens, extauthz.DefaultExternalInputTokens)
		}
	}
	if m.ContextWindow > 0 && input > m.ContextWindow {
		input = m.ContextWindow
	}
	out := r.OutputBound(0)
	if !r.HasOutputCap {
		out = r.OutputBound(4096)
	}
	c, err := m.UpperBound(input, out)
	if err != nil {
		return 0, 0, false
	}
	return c, input + out, true
}

func (o *Original) budgetsOf(ctx context.Context, s budget.Subject) ([]budget.Budget, error) {
	if v, ok := o.budgets.Load(s); ok {
		return v.([]budget.Budget), nil
	}
	bs, err := o.Svc.Budgets(ctx, budget.BudgetQuery{Subject: string(s)})
	if err != nil {
		return nil, err
	}
	o.budgets.Store(s, bs)
	return bs, nil
}

// reserve is the original's transaction: lock, check, update, insert, commit.
func (o *Original) reserve(ctx context.Context, id string, key *budget.Key, subjects []budget.Subject, r *request.Request,
	cost, tokens int64, bs []budget.Budget) (bool, error) {
	tx, err := o.Pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	now := time.Now()
	type line struct {
		budget int64
		start  time.Time
		amount int64
		tokens bool
	}
	lines := make([]line, 0, len(bs))
	for i := range bs {
		b := &bs[i]
		w := b.Window.At(now, b.ResetAt)
		amount := cost
		if b.Unit == budget.Tokens {
			amount = tokens
		}
		var posted, pending int64
		err := tx.QueryRow(ctx, `SELECT posted, pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2 FOR UPDATE`,
			b.ID, w.Start).Scan(&posted, &pending)
		if errors.Is(err, pgx.ErrNoRows) {
			if _, err := tx.Exec(ctx, `INSERT INTO budget_windows (budget_id, window_start, window_end) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
				b.ID, w.Start, w.End); err != nil {
				return false, err
			}
			err = tx.QueryRow(ctx, `SELECT posted, pending FROM budget_windows WHERE budget_id = $1 AND window_start = $2 FOR UPDATE`,
				b.ID, w.Start).Scan(&posted, &pending)
		}
		if err != nil {
			return false, err
		}
		if b.Hard && posted+pending+amount > b.Limit {
			return false, nil
		}
		lines = append(lines, line{b.ID, w.Start, amount, b.Unit == budget.Tokens})
	}
	for _, l := range lines {
		if _, err := tx.Exec(ctx, `UPDATE budget_windows SET pending = pending + $3 WHERE budget_id = $1 AND window_start = $2`,
			l.budget, l.start, l.amount); err != nil {
			return false, err
		}
	}
	ss := make([]string, len(subjects))
	for i, s := range subjects {
		ss[i] = string(s)
	}
	hb, hs, ha, ht := make([]int64, len(lines)), make([]time.Time, len(lines)), make([]int64, len(lines)), make([]bool, len(lines))
	for i, l := range lines {
		hb[i], hs[i], ha[i], ht[i] = l.budget, l.start, l.amount, l.tokens
	}
	ttl := o.TTL
	if ttl <= 0 {
		ttl = budget.DefaultReservationTTL
	}
	if _, err := tx.Exec(ctx, `WITH r AS (
		INSERT INTO reservations (id, expires_at, key_id, subjects, provider, api_flavor, model, route, request_id, hold_cost, hold_tokens)
		VALUES ($1, now() + $2 * interval '1 millisecond', $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id)
		INSERT INTO reservation_holds (reservation_id, budget_id, window_start, tokens_unit, amount)
		SELECT r.id, h.b, h.s, h.t, h.a FROM r, unnest($12::bigint[], $13::timestamptz[], $14::boolean[], $15::bigint[]) AS h(b, s, t, a)`,
		id, ttl.Milliseconds(), key.ID, ss, r.Provider, r.Flavor, r.Model, r.Route.Route, r.RequestID, cost, tokens,
		hb, hs, ht, ha); err != nil {
		return false, err
	}
	return true, tx.Commit(ctx)
}

func denied(httpStatus int, reason string) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(httpStatus)},
		}},
	}
}
