package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// KeyRow is an API key as stored: only the SHA-256 of the secret, never the secret.
type KeyRow struct {
	ID            string
	Name          string
	SecretHash    []byte
	Prefix        string
	Subjects      []string
	AllowedModels []string
	ExpiresAt     *time.Time
	RevokedAt     *time.Time
	CreatedAt     time.Time
	RotatedAt     *time.Time
}

const keyCols = `id, name, secret_hash, prefix, subjects, allowed_models, expires_at, revoked_at, created_at, rotated_at`

func scanKey(row pgx.Row) (KeyRow, error) {
	var k KeyRow
	err := row.Scan(&k.ID, &k.Name, &k.SecretHash, &k.Prefix, &k.Subjects, &k.AllowedModels, &k.ExpiresAt,
		&k.RevokedAt, &k.CreatedAt, &k.RotatedAt)
	return k, err
}

// KeyByHash finds a key by the SHA-256 of its secret (revoked and expired keys included: the
// caller decides, so it can tell them apart from unknown ones).
func (s *Store) KeyByHash(ctx context.Context, hash []byte) (KeyRow, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, `SELECT `+keyCols+` FROM api_keys WHERE secret_hash = $1`, hash))
	if err != nil {
		return KeyRow{}, fmt.Errorf("key lookup: %w", interpret(err))
	}
	return k, nil
}

// KeyHashes returns the secret hash of every key (revoked and expired ones included).
func (s *Store) KeyHashes(ctx context.Context) ([][32]byte, error) {
	rows, err := s.pool.Query(ctx, `SELECT secret_hash FROM api_keys`)
	if err != nil {
		return nil, fmt.Errorf("key hashes: %w", interpret(err))
	}
	defer rows.Close()
	var out [][32]byte
	var b []byte
	for rows.Next() {
		if err := rows.Scan(&b); err != nil {
			return nil, fmt.Errorf("key hashes: %w", interpret(err))
		}
		if len(b) == 32 { // the column's CHECK guarantees it
			out = append(out, [32]byte(b))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("key hashes: %w", interpret(err))
	}
	return out, nil
}

// KeyByID finds a key by id.
func (s *Store) KeyByID(ctx context.Context, id string) (KeyRow, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, `SELECT `+keyCols+` FROM api_keys WHERE id = $1`, id))
	if err != nil {
		return KeyRow{}, fmt.Errorf("key %s: %w", id, interpret(err))
	}
	return k, nil
}

// CreateKey stores a new key.
func (s *Store) CreateKey(ctx context.Context, k KeyRow, a Audit) (KeyRow, error) {
	var out KeyRow
	a.Target = "key:" + k.ID
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanKey(q.QueryRow(ctx, `INSERT INTO api_keys (id, name, secret_hash, prefix, subjects, allowed_models, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING `+keyCols,
			k.ID, k.Name, k.SecretHash, k.Prefix, nonNil(k.Subjects), nonNil(k.AllowedModels), k.ExpiresAt))
		return err
	})
	if err != nil {
		return KeyRow{}, fmt.Errorf("create key: %w", interpret(err))
	}
	return out, nil
}

// KeyPage selects a page of keys, newest first (created_at, then id, both descending).
type KeyPage struct {
	Name    string // only keys of this name; "" for every key
	Subject string // only keys owning this subject; "" for every key
	// After continues a list: only keys that come after this one (zero: from the newest).
	AfterCreatedAt time.Time
	AfterID        string
	Limit          int // at most this many keys; 0 for all
	// Scope keeps only the keys a manager administers (nil: all).
	Scope *ScopeFilter
}

// ListKeys returns a page of keys, newest first.
func (s *Store) ListKeys(ctx context.Context, p KeyPage) ([]KeyRow, error) {
	var after *time.Time
	if p.AfterID != "" {
		after = &p.AfterCreatedAt
	}
	scoped := `($6::text[] IS NULL AND $7::text[] IS NULL)`
	if p.Scope != nil {
		scoped = coveredKeyOwners("k.subjects", 6)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+keyCols+` FROM api_keys k
		WHERE ($1 = '' OR name = $1) AND ($5 = '' OR subjects @> ARRAY[$5]::text[])
		  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
		  AND `+scoped+`
		ORDER BY created_at DESC, id DESC LIMIT $4`, append([]any{p.Name, after, p.AfterID, limitOrAll(p.Limit), p.Subject}, scopeArgs(p.Scope)...)...)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (KeyRow, error) { return scanKey(r) })
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", interpret(err))
	}
	return out, nil
}

// limitOrAll is a LIMIT argument: NULL (no limit) for n <= 0.
func limitOrAll(n int) *int {
	if n <= 0 {
		return nil
	}
	return &n
}

// UpdateKey changes a key's name, subjects, allowed models and expiry.
func (s *Store) UpdateKey(ctx context.Context, k KeyRow, a Audit) (KeyRow, error) {
	var out KeyRow
	a.Target = "key:" + k.ID
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanKey(q.QueryRow(ctx, `UPDATE api_keys SET name = $2, subjects = $3, allowed_models = $4, expires_at = $5
		WHERE id = $1 RETURNING `+keyCols, k.ID, k.Name, nonNil(k.Subjects), nonNil(k.AllowedModels), k.ExpiresAt))
		return err
	})
	if err != nil {
		return KeyRow{}, fmt.Errorf("update key %s: %w", k.ID, interpret(err))
	}
	return out, nil
}

// RevokeKey marks a key revoked (idempotent: the first revocation time stays).
func (s *Store) RevokeKey(ctx context.Context, id string, a Audit) (KeyRow, error) {
	var k KeyRow
	a.Target = "key:" + id
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		k, err = scanKey(q.QueryRow(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
		WHERE id = $1 RETURNING `+keyCols, id))
		return err
	})
	if err != nil {
		return KeyRow{}, fmt.Errorf("revoke key %s: %w", id, interpret(err))
	}
	return k, nil
}

// RotateKey replaces a live key's secret in place: the id — and so every budget on key:<id>
// and its spend history — stays, the old secret stops working at once.
func (s *Store) RotateKey(ctx context.Context, id string, secretHash []byte, prefix string, a Audit) (KeyRow, error) {
	var k KeyRow
	a.Target = "key:" + id
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		k, err = scanKey(q.QueryRow(ctx, `UPDATE api_keys SET secret_hash = $2, prefix = $3, rotated_at = now()
		WHERE id = $1 AND revoked_at IS NULL RETURNING `+keyCols, id, secretHash, prefix))
		return err
	})
	if err != nil {
		return KeyRow{}, fmt.Errorf("rotate key %s: %w", id, interpret(err))
	}
	return k, nil
}
