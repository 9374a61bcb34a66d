package budget

import (
	"errors"
	"fmt"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrNotFound: no such key, budget, template or reservation.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the change collides with existing data (duplicate name, revoked key...).
	ErrConflict = errors.New("conflict")
	// ErrBudgetNameTaken: a budget of the same subject has the name (also ErrConflict).
	ErrBudgetNameTaken = errors.New("a budget with this name already exists on this subject")
	// ErrTemplateNameTaken: a template has the name (also ErrConflict).
	ErrTemplateNameTaken = errors.New("a template with this name already exists")
	// ErrUnavailable: the database cannot be reached; no decision was made.
	ErrUnavailable = errors.New("ledger unavailable")
	// ErrKeyUnknown: no key has this secret.
	ErrKeyUnknown = errors.New("unknown API key")
	// ErrKeyRevoked: the key was revoked.
	ErrKeyRevoked = errors.New("API key revoked")
	// ErrKeyExpired: the key's expiry has passed.
	ErrKeyExpired = errors.New("API key expired")
	// ErrInvalid: the input is not acceptable; FieldError says which field.
	ErrInvalid = errors.New("invalid")
	// ErrForbidden: the actor's role or scope does not allow the change.
	ErrForbidden = errors.New("forbidden")
	// ErrTokenUnknown, ErrTokenRevoked, ErrTokenExpired: an admin token that cannot be used.
	ErrTokenUnknown = errors.New("unknown admin token")
	ErrTokenRevoked = errors.New("admin token revoked")
	ErrTokenExpired = errors.New("admin token expired")
)

// forbidden is an ErrForbidden with the reason.
func forbidden(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrForbidden, fmt.Sprintf(format, args...))
}
