package budget

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget/store"
)

// Token is an admin API token stored in the database (the bootstrap PURSER_ADMIN_TOKEN is not
// one: it lives in the environment). Only the SHA-256 of its secret is stored.
type Token struct {
	ID        string
	Name      string
	Prefix    string // first characters of the secret, safe to display
	Role      Role
	Scope     Scope // a manager's subjects; empty for the other roles
	ExpiresAt time.Time
	RevokedAt time.Time
	CreatedBy string
	CreatedAt time.Time
}

// TokenSecretPrefix starts every admin token's secret, so it is never mistaken for a key
// (pk_) or a provider credential.
const TokenSecretPrefix = "pt_"

// Usable returns nil when the token may be used at t, or why not.
func (t *Token) Usable(at time.Time) error {
	if !t.RevokedAt.IsZero() {
		return ErrTokenRevoked
	}
	if !t.ExpiresAt.IsZero() && !at.Before(t.ExpiresAt) {
		return ErrTokenExpired
	}
	return nil
}

// Actor is the token as the author of a change.
func (t *Token) Actor() Actor {
	return Actor{Name: "token:" + t.ID, Role: t.Role, Scope: t.Scope}
}

// TokenSpec describes a token to create.
type TokenSpec struct {
	Name      string
	Role      string
	Scope     []string
	ExpiresAt time.Time // zero: never
}

// CreateToken issues an admin token (only an admin may). The secret is returned once, here.
func (s *Service) CreateToken(ctx context.Context, by Actor, spec TokenSpec) (Token, string, error) {
	if by.Role != RoleAdmin {
		return Token{}, "", forbidden("only an admin can create tokens")
	}
	row := store.TokenRow{Name: strings.TrimSpace(spec.Name), CreatedBy: by.Name}
	if row.Name == "" {
		return Token{}, "", fieldErr("name", "is required")
	}
	if len(row.Name) > 200 {
		return Token{}, "", fieldErr("name", "is longer than 200 bytes")
	}
	role, err := ParseRole(spec.Role)
	if err != nil {
		return Token{}, "", &FieldError{Field: "role", Err: err}
	}
	row.Role = string(role)
	scope, err := ParseScope(spec.Scope)
	if err != nil {
		return Token{}, "", &FieldError{Field: "scope", Err: err}
	}
	switch {
	case role == RoleManager && len(scope) == 0:
		return Token{}, "", fieldErr("scope", "a manager needs at least one subject (team:ml, user:*)")
	case role != RoleManager && len(scope) > 0:
		return Token{}, "", fieldErr("scope", "only a manager has a scope")
	}
	row.Scope = scope
	if !spec.ExpiresAt.IsZero() {
		if !spec.ExpiresAt.After(s.cfg.Now()) {
			return Token{}, "", fieldErr("expires_at", "is in the past")
		}
		t := spec.ExpiresAt
		row.ExpiresAt = &t
	}
	secret, hash, err := newTokenSecret()
	if err != nil {
		return Token{}, "", err
	}
	if row.ID, err = newID("tok_"); err != nil {
		return Token{}, "", err
	}
	row.SecretHash, row.Prefix = hash[:], secret[:displayPrefixLen]
	out, err := s.db.CreateToken(ctx, row, store.Audit{Actor: by.Name, Action: "token.create", Details: map[string]any{
		"name": row.Name, "prefix": row.Prefix, "role": row.Role, "scope": row.Scope, "expires_at": row.ExpiresAt,
	}})
	if err != nil {
		return Token{}, "", mapErr(err)
	}
	t, err := tokenFromRow(out)
	return t, secret, err
}

// AuthenticateToken returns the token whose secret this is, if it may be used now. It reads
// the database every time (admin calls are rare), so a revocation takes effect at once.
func (s *Service) AuthenticateToken(ctx context.Context, secret string) (*Token, error) {
	h := sha256.Sum256([]byte(secret))
	row, err := s.db.TokenByHash(ctx, h[:])
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrTokenUnknown
	}
	if err != nil {
		return nil, mapErr(err)
	}
	t, err := tokenFromRow(row)
	if err != nil {
		return nil, err
	}
	return &t, t.Usable(s.cfg.Now())
}

// Token returns a token by id.
func (s *Service) Token(ctx context.Context, id string) (Token, error) {
	row, err := s.db.TokenByID(ctx, id)
	if err != nil {
		return Token{}, mapErr(err)
	}
	return tokenFromRow(row)
}

// TokenQuery selects tokens for Tokens, newest first.
type TokenQuery struct {
	After KeyCursor // continue after this token (zero: from the newest)
	Limit int       // 0 for all
}

// Tokens lists tokens, newest first.
func (s *Service) Tokens(ctx context.Context, q TokenQuery) ([]Token, error) {
	rows, err := s.db.ListTokens(ctx, store.TokenPage{AfterCreatedAt: q.After.CreatedAt, AfterID: q.After.ID, Limit: q.Limit})
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Token, 0, len(rows))
	for _, r := range rows {
		t, err := tokenFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// RevokeToken revokes a token (only an admin may); it stops working at once, console
// sessions included.
func (s *Service) RevokeToken(ctx context.Context, by Actor, id string) (Token, error) {
	if by.Role != RoleAdmin {
		return Token{}, forbidden("only an admin can revoke tokens")
	}
	row, err := s.db.RevokeToken(ctx, id, store.Audit{Actor: by.Name, Action: "token.revoke"})
	if err != nil {
		return Token{}, mapErr(err)
	}
	return tokenFromRow(row)
}

func tokenFromRow(r store.TokenRow) (Token, error) {
	t := Token{ID: r.ID, Name: r.Name, Prefix: r.Prefix, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt}
	var err error
	if t.Role, err = ParseRole(r.Role); err != nil {
		return Token{}, fmt.Errorf("stored token %s: %w", r.ID, err)
	}
	if t.Scope, err = ParseScope(r.Scope); err != nil {
		return Token{}, fmt.Errorf("stored token %s: scope %w", r.ID, err)
	}
	if r.ExpiresAt != nil {
		t.ExpiresAt = *r.ExpiresAt
	}
	if r.RevokedAt != nil {
		t.RevokedAt = *r.RevokedAt
	}
	return t, nil
}

// newTokenSecret returns a fresh admin token secret (256 bits) and its hash.
func newTokenSecret() (string, [32]byte, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", [32]byte{}, fmt.Errorf("generate token: %w", err)
	}
	secret := TokenSecretPrefix + new(big.Int).SetBytes(b[:]).Text(62)
	return secret, sha256.Sum256([]byte(secret)), nil
}

// newID returns prefix plus 16 random base32 characters.
func newID(prefix string) (string, error) {
	id, err := NewKeyID()
	if err != nil {
		return "", err
	}
	return prefix + strings.TrimPrefix(id, "key_"), nil
}

// Console sessions.

// SessionTTL is how long a console sign-in lasts.
const SessionTTL = 8 * time.Hour

// CreateSession records a console sign-in of principal (see admin.Principal.Ref) by actor and
// returns the session's secret (for the cookie; only its hash is stored) and its expiry.
func (s *Service) CreateSession(ctx context.Context, actor, principal string) (string, time.Time, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("generate session: %w", err)
	}
	secret := base64.RawURLEncoding.EncodeToString(b[:])
	h := sha256.Sum256([]byte(secret))
	expires := s.cfg.Now().Add(SessionTTL)
	if err := s.db.CreateSession(ctx, h[:], principal, expires, store.Audit{Actor: actor, Action: "console.sign_in"}); err != nil {
		return "", time.Time{}, mapErr(err)
	}
	return secret, expires, nil
}

// Session returns the principal of a live session (ErrNotFound when unknown or expired).
func (s *Service) Session(ctx context.Context, secret string) (string, time.Time, error) {
	h := sha256.Sum256([]byte(secret))
	p, exp, err := s.db.Session(ctx, h[:])
	return p, exp, mapErr(err)
}

// DeleteSession ends a session (sign out).
func (s *Service) DeleteSession(ctx context.Context, secret string) error {
	h := sha256.Sum256([]byte(secret))
	return mapErr(s.db.DeleteSession(ctx, h[:]))
}
