package extauthz_test

import (
	"context"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"

	"github.com/purser-dev/purser/budget"
	"github.com/purser-dev/purser/budget/pricing"
	"github.com/purser-dev/purser/extauthz"
	"github.com/purser-dev/purser/grpccodec"
	"github.com/purser-dev/purser/internal/testkit"
)

// admitAll admits everything on one hard budget without a database.
type admitAll struct{ b *budget.Budget }

func (a admitAll) Reserve(_ context.Context, r budget.ReserveRequest) (budget.Decision, error) {
	return budget.Decision{Outcome: budget.Admitted, ReservationID: "018f0000-0000-7000-8000-000000000001",
		Budgets: []budget.BudgetState{{Budget: a.b, Limit: 1 << 40, Enforced: true, Used: r.Cost, Amount: r.Cost}}}, nil
}

type staticKeys struct{ k *budget.Key }

func (s staticKeys) Authenticate(context.Context, string) (*budget.Key, error) { return s.k, nil }

// BenchmarkCheck measures the Check path in-process (parse, identify, bound, respond,
// metrics) with the ledger faked: what purser spends per request besides gRPC and Postgres.
// The signed variants add the proof of the answer's metadata (package proof): their ratio to
// the unsigned ones is the signature's cost on the Check path. (Verification costs the same
// HMAC on the sink: proof's BenchmarkVerify.)
func BenchmarkCheck(b *testing.B) {
	cat, err := catalogOnce()
	if err != nil {
		b.Fatal(err)
	}
	bud, err := budget.Definition{Name: "team", Subject: "team:ml", Limit: 1 << 40, Window: "month", Hard: true}.Build()
	if err != nil {
		b.Fatal(err)
	}
	key := &budget.Key{ID: "key_bench", Prefix: "pk_bench", Subjects: []budget.Subject{"team:ml"}}
	for _, signed := range []bool{false, true} {
		cfg := extauthz.Config{}
		suffix := ""
		if signed {
			cfg.Signer, suffix = keyring(b), "/signed"
		}
		srv, err := extauthz.New(admitAll{&bud}, staticKeys{key}, func() *pricing.Catalog { return cat }, cfg)
		if err != nil {
			b.Fatal(err)
		}
		benchCheck(b, srv, suffix)
	}
	// A Check shed at admission (an overloaded ledger): its ratio to openai_chat is what
	// shedding costs against serving.
	srv, err := extauthz.New(shedAll{admitAll{&bud}}, staticKeys{key}, func() *pricing.Catalog { return cat }, extauthz.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("shed", func(b *testing.B) {
		req := withKey(fixture(b, "openai_chat"), budget.SecretPrefix+"benchbenchbenchbench", 1)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			resp, err := srv.Check(ctx, req)
			if err != nil || resp.GetDeniedResponse().GetStatus().GetCode() != 503 {
				b.Fatalf("want a shed: %v %v", err, resp)
			}
		}
	})
	_ = authv3.CheckRequest{}
}

func benchCheck(b *testing.B, srv *extauthz.Server, suffix string) {
	for _, name := range []string{"openai_chat", "anthropic_messages"} {
		b.Run(name+suffix, func(b *testing.B) {
			req := withKey(fixture(b, name), budget.SecretPrefix+"benchbenchbenchbench", 1)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				resp, err := srv.Check(ctx, req)
				if err != nil || resp.GetOkResponse() == nil {
					b.Fatalf("%v %v", err, resp)
				}
			}
		})
	}
}

// BenchmarkCheckGRPC is BenchmarkCheck over a gRPC socket on 127.0.0.1 with purser's codec:
// served against shed (an overloaded ledger), with what gRPC costs both sides (the client's
// too: it runs in this process). The ledger is faked, so a served Check costs less here
// than in service, where its batch adds SQL and a commit.
func BenchmarkCheckGRPC(b *testing.B) {
	cat, err := catalogOnce()
	if err != nil {
		b.Fatal(err)
	}
	bud, err := budget.Definition{Name: "team", Subject: "team:ml", Limit: 1 << 40, Window: "month", Hard: true}.Build()
	if err != nil {
		b.Fatal(err)
	}
	key := &budget.Key{ID: "key_bench", Prefix: "pk_bench", Subjects: []budget.Subject{"team:ml"}}
	for _, tc := range []struct {
		name string
		res  extauthz.Reserver
		want int32
	}{{"served", admitAll{&bud}, 0}, {"shed", shedAll{admitAll{&bud}}, 14}} {
		b.Run(tc.name, func(b *testing.B) {
			srv, err := extauthz.New(tc.res, staticKeys{key}, func() *pricing.Catalog { return cat }, extauthz.Config{})
			if err != nil {
				b.Fatal(err)
			}
			codec, err := grpccodec.ServerOption()
			if err != nil {
				b.Fatal(err)
			}
			gs := grpc.NewServer(codec)
			authv3.RegisterAuthorizationServer(gs, srv)
			client := authv3.NewAuthorizationClient(testkit.ServeAndDial(b, gs))
			req := withKey(fixture(b, "openai_chat"), budget.SecretPrefix+"benchbenchbenchbench", 1)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Check(ctx, req)
					if err != nil || resp.GetStatus().GetCode() != tc.want {
						b.Errorf("want status %d: %v %v", tc.want, err, resp)
						return
					}
				}
			})
		})
	}
}
