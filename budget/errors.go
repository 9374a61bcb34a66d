package budget

import "errors"

// Sentinel errors, matched with errors.Is.
var (
	// ErrNotFound: no such key, budget, template or reservation.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the change collides with existing data (duplicate name, revoked key...).
	ErrConflict = errors.New("conflict")
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
)
