package budget

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Key is an API key's stored record. The secret itself is never stored: only its SHA-256.
type Key struct {
	ID            string
	Name          string
	Prefix        string // first characters of the secret, safe to display and log
	Subjects      []Subject
	AllowedModels []Glob
	ExpiresAt     time.Time // zero: never
	RevokedAt     time.Time // zero: live
	CreatedAt     time.Time
	RotatedAt     time.Time
}

// SecretPrefix starts every purser key, so they are recognisable in leaks and never confused
// with provider keys.
const SecretPrefix = "pk_"

// displayPrefixLen is how much of the secret Key.Prefix keeps.
const displayPrefixLen = len(SecretPrefix) + 8

// NewSecret returns a fresh random key secret (256 bits of entropy), its hash and its display
// prefix.
func NewSecret() (secret string, hash [32]byte, prefix string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", hash, "", fmt.Errorf("generate key: %w", err)
	}
	secret = SecretPrefix + new(big.Int).SetBytes(b[:]).Text(62)
	return secret, HashSecret(secret), secret[:displayPrefixLen], nil
}

// NewKeyID returns a fresh public key id such as key_3hd8q2m6w1xk.
func NewKeyID() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate key id: %w", err)
	}
	return "key_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])), nil
}

// HashSecret is how secrets are stored and looked up. Keys are random 256-bit values, so a fast
// unsalted hash is the right tool: it allows an indexed lookup, and a slow KDF would add tens
// of milliseconds to every request for no security gain.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// Usable returns nil when the key may be used at t, or why not.
func (k *Key) Usable(t time.Time) error {
	if !k.RevokedAt.IsZero() {
		return ErrKeyRevoked
	}
	if !k.ExpiresAt.IsZero() && !t.Before(k.ExpiresAt) {
		return ErrKeyExpired
	}
	return nil
}

// AllowsModel reports whether the key may call model (no restriction when AllowedModels is empty).
func (k *Key) AllowsModel(model string) bool {
	return len(k.AllowedModels) == 0 || anyMatch(k.AllowedModels, model)
}

// AllSubjects is the key's own subject followed by its owners.
func (k *Key) AllSubjects() []Subject {
	out := make([]Subject, 0, len(k.Subjects)+1)
	out = append(out, KeySubject(k.ID))
	return append(out, k.Subjects...)
}
