package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// TokenRow is an admin token as stored: only the SHA-256 of the secret, never the secret.
type TokenRow struct {
	ID         string
	Name       string
	SecretHash []byte
	Prefix     string
	Role       string
	Scope      []string
	ExpiresAt  *time.Time
	RevokedAt  *time.Time
	CreatedBy  string
	CreatedAt  time.Time
}

const tokenCols = `id, name, secret_hash, prefix, role, scope, expires_at, revoked_at, created_by, created_at`

func scanToken(row pgx.Row) (TokenRow, error) {
	var t TokenRow
	err := row.Scan(&t.ID, &t.Name, &t.SecretHash, &t.Prefix, &t.Role, &t.Scope, &t.ExpiresAt, &t.RevokedAt,
		&t.CreatedBy, &t.CreatedAt)
	return t, err
}

// CreateToken stores a new admin token.
func (s *Store) CreateToken(ctx context.Context, t TokenRow, a Audit) (TokenRow, error) {
	var out TokenRow
	a.Target = "token:" + t.ID
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		out, err = scanToken(q.QueryRow(ctx, `INSERT INTO admin_tokens (id, name, secret_hash, prefix, role, scope, expires_at, created_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING `+tokenCols,
			t.ID, t.Name, t.SecretHash, t.Prefix, t.Role, nonNil(t.Scope), t.ExpiresAt, t.CreatedBy))
		return err
	})
	if err != nil {
		return TokenRow{}, fmt.Errorf("create token: %w", interpret(err))
	}
	return out, nil
}

// TokenByHash finds a token by the SHA-256 of its secret (revoked and expired ones included).
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (TokenRow, error) {
	t, err := scanToken(s.pool.QueryRow(ctx, `SELECT `+tokenCols+` FROM admin_tokens WHERE secret_hash = $1`, hash))
	if err != nil {
		return TokenRow{}, fmt.Errorf("token lookup: %w", interpret(err))
	}
	return t, nil
}

// TokenByID finds a token by id.
func (s *Store) TokenByID(ctx context.Context, id string) (TokenRow, error) {
	t, err := scanToken(s.pool.QueryRow(ctx, `SELECT `+tokenCols+` FROM admin_tokens WHERE id = $1`, id))
	if err != nil {
		return TokenRow{}, fmt.Errorf("token %s: %w", id, interpret(err))
	}
	return t, nil
}

// TokenPage selects a page of tokens, newest first (created_at, then id, both descending).
type TokenPage struct {
	AfterCreatedAt time.Time
	AfterID        string // "" for the newest
	Limit          int    // 0 for all
}

// ListTokens returns a page of tokens, newest first.
func (s *Store) ListTokens(ctx context.Context, p TokenPage) ([]TokenRow, error) {
	var after *time.Time
	if p.AfterID != "" {
		after = &p.AfterCreatedAt
	}
	rows, err := s.pool.Query(ctx, `SELECT `+tokenCols+` FROM admin_tokens
		WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
		ORDER BY created_at DESC, id DESC LIMIT $3`, after, p.AfterID, limitOrAll(p.Limit))
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (TokenRow, error) { return scanToken(r) })
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", interpret(err))
	}
	return out, nil
}

// RevokeToken marks a token revoked (idempotent: the first revocation time stays).
func (s *Store) RevokeToken(ctx context.Context, id string, a Audit) (TokenRow, error) {
	var t TokenRow
	a.Target = "token:" + id
	err := s.mutate(ctx, &a, func(q querier) error {
		var err error
		t, err = scanToken(q.QueryRow(ctx, `UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, now())
		WHERE id = $1 RETURNING `+tokenCols, id))
		return err
	})
	if err != nil {
		return TokenRow{}, fmt.Errorf("revoke token %s: %w", id, interpret(err))
	}
	return t, nil
}

// CreateSession stores a console session (the SHA-256 of its secret) and audits the sign-in
// (target: who signed in, a.Actor; never the principal reference, which for a bootstrap token
// holds its whole SHA-256); expired sessions are removed in the same transaction.
func (s *Store) CreateSession(ctx context.Context, hash []byte, principal string, expiresAt time.Time, a Audit) error {
	a.Target = a.Actor
	err := s.mutate(ctx, &a, func(q querier) error {
		if _, err := q.Exec(ctx, `DELETE FROM console_sessions WHERE expires_at <= now()`); err != nil {
			return err
		}
		_, err := q.Exec(ctx, `INSERT INTO console_sessions (id_hash, principal, expires_at) VALUES ($1, $2, $3)`,
			hash, principal, expiresAt)
		return err
	})
	if err != nil {
		return fmt.Errorf("create session: %w", interpret(err))
	}
	return nil
}

// Session returns the principal and expiry of a live session (ErrNotFound when unknown or
// expired on the database clock).
func (s *Store) Session(ctx context.Context, hash []byte) (principal string, expiresAt time.Time, err error) {
	err = s.pool.QueryRow(ctx, `SELECT principal, expires_at FROM console_sessions WHERE id_hash = $1 AND expires_at > now()`,
		hash).Scan(&principal, &expiresAt)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("session: %w", interpret(err))
	}
	return principal, expiresAt, nil
}

// DeleteSession ends a session (signing out); unknown ones are ignored.
func (s *Store) DeleteSession(ctx context.Context, hash []byte) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, hash); err != nil {
		return fmt.Errorf("delete session: %w", interpret(err))
	}
	return nil
}
