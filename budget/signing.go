package budget

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"time"

	"github.com/purser-dev/purser/budget/store"
	"github.com/purser-dev/purser/proof"
)

// SigningConfig says how the keys that sign Check answers (package proof) rotate. The zero
// value means the defaults.
//
// The keys live in the database (table signing_keys): every replica must verify every other
// replica's proofs, and the database is already the ledger's root of trust — whoever can write
// it can move money without any proof — so it adds no exposure and needs no operator secret.
// Each replica rotates (an advisory lock makes one of them insert), and LISTEN/NOTIFY plus a
// periodic reload bring a new key to every replica before it activates.
type SigningConfig struct {
	// Rotate is how long each key is the newest (default 24h).
	Rotate time.Duration
	// Lead is how long a new key exists before it signs, so every replica has loaded it, and
	// how long the previous key keeps signing after (default 5m).
	Lead time.Duration
	// Verify is how long a key verifies after it stopped signing (default 48h): longer than
	// the longest reservation TTL plus how late an access-log entry may arrive.
	Verify time.Duration
	// Reload re-reads the keys and rotates this often when no notification came (default 1m).
	Reload time.Duration
}

// Signing defaults.
const (
	DefaultSigningRotate = 24 * time.Hour
	DefaultSigningLead   = 5 * time.Minute
	DefaultSigningVerify = 48 * time.Hour
)

func (c SigningConfig) withDefaults() SigningConfig {
	if c.Rotate <= 0 {
		c.Rotate = DefaultSigningRotate
	}
	if c.Lead <= 0 {
		c.Lead = DefaultSigningLead
	}
	if c.Lead > c.Rotate/2 {
		c.Lead = c.Rotate / 2
	}
	if c.Verify <= 0 {
		c.Verify = DefaultSigningVerify
	}
	if c.Reload <= 0 {
		c.Reload = time.Minute
	}
	return c
}

// KeySink receives the signing keys in force (a *proof.Keyring).
type KeySink interface {
	Set(keys []proof.Key) error
}

// LoadSigningKeys rotates if due and hands every key that still verifies to ring. purser serve
// calls it before it answers anything, so it never answers without a key to sign with.
func (s *Service) LoadSigningKeys(ctx context.Context, ring KeySink, cfg SigningConfig) error {
	cfg = cfg.withDefaults()
	if _, err := s.db.RotateSigningKeys(ctx, store.Rotation{Every: cfg.Rotate, Lead: cfg.Lead, Verify: cfg.Verify, Secret: newSigningSecret}); err != nil {
		return mapErr(err)
	}
	rows, err := s.db.SigningKeys(ctx)
	if err != nil {
		return mapErr(err)
	}
	keys := make([]proof.Key, len(rows))
	for i, r := range rows {
		keys[i] = proof.Key{ID: r.ID, Secret: r.Secret, ActivatesAt: r.ActivatesAt, RetiresAt: r.RetiresAt, ExpiresAt: r.ExpiresAt}
	}
	if err := ring.Set(keys); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "signing keys", slog.String("error", err.Error()))
	}
	return nil
}

// RunSigningKeys keeps ring current until ctx ends: it rotates and reloads every Reload, and
// at once when Listen reports a change.
func (s *Service) RunSigningKeys(ctx context.Context, ring KeySink, cfg SigningConfig) {
	cfg = cfg.withDefaults()
	t := time.NewTicker(cfg.Reload)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.signing:
		}
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.LoadSigningKeys(lctx, ring, cfg)
		cancel()
		if err != nil && ctx.Err() == nil {
			// The keys in hand keep working until they retire (a day by default).
			s.log.LogAttrs(ctx, slog.LevelWarn, "signing keys not refreshed", slog.String("error", err.Error()))
		}
	}
}

func newSigningSecret() ([]byte, error) {
	b := make([]byte, proof.KeySize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return b, nil
}
