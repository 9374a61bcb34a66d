package proof_test

import (
	"testing"
	"time"

	"github.com/purser-dev/purser/proof"
)

// BenchmarkSign and BenchmarkVerify are the per-request cost of proofs: one Sign per Check
// answer, one Verify per access-log entry (compare with extauthz's BenchmarkCheck).
func BenchmarkSign(b *testing.B) {
	var r proof.Keyring
	if err := r.Set([]proof.Key{key(b, "1", t0)}); err != nil {
		b.Fatal(err)
	}
	c := claims()
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Sign(&c, now, now.Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	var r proof.Keyring
	if err := r.Set([]proof.Key{key(b, "1", t0)}); err != nil {
		b.Fatal(err)
	}
	c := claims()
	now := t0.Add(time.Minute)
	tok, err := r.Sign(&c, now, now.Add(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Verify(&c, tok, now); err != nil {
			b.Fatal(err)
		}
	}
}
