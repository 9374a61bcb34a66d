// Package proof signs what purser's Check answer tells the access-log sink, and verifies it
// when the entry comes back: a settlement, a void or an unreserved charge moves money only for
// a reservation (or an unverified admission) purser itself issued.
//
// A proof is HMAC-SHA-256 over the claims the sink acts on (decision, reservation id, hold
// amounts, key id, subjects, provider, API flavour, model), the signing key's id and the
// proof's expiry, under a key every replica shares (they verify each other's proofs: Envoy may
// send an entry to another replica than the one that answered the Check). It travels in the
// ext_authz dynamic metadata as one string (see Token), next to the claims themselves.
//
// The package does no I/O: keys come from the caller (Keyring.Set), which stores, rotates and
// distributes them.
package proof

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Version is the only token format: "1.<key id>.<expiry, Unix seconds>.<MAC, base64url>".
const Version = "1"

// KeySize is the length of a signing key's secret.
const KeySize = 32

// Errors of Verify and Sign. Each says why a proof is refused; callers count them by Reason.
var (
	ErrMissing    = errors.New("no proof")
	ErrMalformed  = errors.New("malformed proof")
	ErrUnknownKey = errors.New("proof signed with an unknown key")
	ErrExpired    = errors.New("proof expired")
	ErrBadMAC     = errors.New("proof does not match its claims")
	ErrNoKey      = errors.New("no signing key is active")
)

// Reason is a short label for a Verify error (a metric attribute value).
func Reason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrMissing):
		return "missing"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrUnknownKey):
		return "unknown_key"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrBadMAC):
		return "bad_mac"
	}
	return "error"
}

// Claims are the metadata values a proof covers, exactly as they travel (strings: Struct
// numbers are doubles, so amounts are decimal strings). An empty value is a value too.
type Claims struct {
	Decision       string
	ReservationID  string
	ReservedMicros string
	ReservedTokens string
	KeyID          string
	Subjects       string // comma-joined, as in the metadata
	Provider       string
	Flavor         string
	Model          string
}

// Key is one signing key. It signs from ActivatesAt until RetiresAt and verifies until
// ExpiresAt (which must cover the longest proof it signed).
type Key struct {
	ID          string
	Secret      []byte
	ActivatesAt time.Time
	RetiresAt   time.Time
	ExpiresAt   time.Time
}

// Keyring holds the keys in force. Its zero value has no key: Sign fails with ErrNoKey and
// Verify with ErrUnknownKey. Safe for concurrent use; Set replaces the keys atomically.
type Keyring struct {
	state atomic.Pointer[ring]
}

type ring struct {
	keys []*ringKey // newest activation first
}

type ringKey struct {
	Key
	pool sync.Pool // *macState under this key
}

// macState is an HMAC under one key with its scratch space, reused across calls.
type macState struct {
	h   hash.Hash
	buf []byte
	sum []byte
}

func (k *ringKey) state() *macState {
	if m, ok := k.pool.Get().(*macState); ok {
		m.h.Reset()
		return m
	}
	return &macState{h: hmac.New(sha256.New, k.Secret), buf: make([]byte, 0, 512), sum: make([]byte, 0, sha256.Size)}
}

// Set replaces the keys. Keys with a malformed id or secret are skipped (and reported).
func (r *Keyring) Set(keys []Key) error {
	var errs []error
	st := &ring{}
	for _, k := range keys {
		if !validKeyID(k.ID) || len(k.Secret) != KeySize {
			errs = append(errs, errors.New("proof: skipping a key with a malformed id or secret"))
			continue
		}
		k.Secret = append([]byte(nil), k.Secret...)
		st.keys = append(st.keys, &ringKey{Key: k})
	}
	// Newest activation first: Sign takes the first one active.
	for i := 1; i < len(st.keys); i++ {
		for j := i; j > 0 && st.keys[j].ActivatesAt.After(st.keys[j-1].ActivatesAt); j-- {
			st.keys[j], st.keys[j-1] = st.keys[j-1], st.keys[j]
		}
	}
	r.state.Store(st)
	return errors.Join(errs...)
}

// Len is the number of keys held.
func (r *Keyring) Len() int {
	if st := r.state.Load(); st != nil {
		return len(st.keys)
	}
	return 0
}

// Has reports whether the ring holds a key with this id.
func (r *Keyring) Has(id string) bool {
	return r.key(id) != nil
}

func (r *Keyring) key(id string) *ringKey {
	st := r.state.Load()
	if st == nil {
		return nil
	}
	for _, k := range st.keys {
		if k.ID == id {
			return k
		}
	}
	return nil
}

// Signer returns the key that signs at now: the most recently activated key whose signing
// period contains now.
func (r *Keyring) signer(now time.Time) *ringKey {
	st := r.state.Load()
	if st == nil {
		return nil
	}
	for _, k := range st.keys {
		if !now.Before(k.ActivatesAt) && now.Before(k.RetiresAt) && now.Before(k.ExpiresAt) {
			return k
		}
	}
	return nil
}

// Sign returns the token proving c until expires (clamped to the signing key's expiry), with
// the key active at now.
func (r *Keyring) Sign(c *Claims, now, expires time.Time) (string, error) {
	k := r.signer(now)
	if k == nil {
		return "", ErrNoKey
	}
	if expires.After(k.ExpiresAt) {
		// The key would be gone before the proof: nobody could verify it then. Never happens
		// with a sane rotation; clamping keeps the proof verifiable for as long as possible.
		expires = k.ExpiresAt
	}
	exp := expires.Unix()
	m := k.state()
	mac := m.digest(k.ID, exp, c)
	var b strings.Builder
	b.Grow(len(Version) + 1 + len(k.ID) + 1 + 20 + 1 + base64.RawURLEncoding.EncodedLen(len(mac)))
	b.WriteString(Version)
	b.WriteByte('.')
	b.WriteString(k.ID)
	b.WriteByte('.')
	var num [20]byte
	b.Write(strconv.AppendInt(num[:0], exp, 10))
	b.WriteByte('.')
	var enc [64]byte
	n := base64.RawURLEncoding.EncodedLen(len(mac))
	base64.RawURLEncoding.Encode(enc[:n], mac)
	b.Write(enc[:n])
	k.pool.Put(m)
	return b.String(), nil
}

// Verify checks that token proves c at now. The error says why not (see Reason).
func (r *Keyring) Verify(c *Claims, token string, now time.Time) error {
	t, err := Parse(token)
	if err != nil {
		return err
	}
	k := r.key(t.KeyID)
	if k == nil {
		return ErrUnknownKey
	}
	if !now.Before(k.ExpiresAt) {
		return ErrUnknownKey // the key has gone: the same as never known
	}
	if now.Unix() > t.Expires {
		return ErrExpired
	}
	m := k.state()
	ok := hmac.Equal(m.digest(t.KeyID, t.Expires, c), t.MAC[:])
	k.pool.Put(m)
	if !ok {
		return ErrBadMAC
	}
	return nil
}

// Token is a decoded proof.
type Token struct {
	KeyID   string
	Expires int64 // Unix seconds
	MAC     [sha256.Size]byte
}

// maxTokenLen bounds what Parse looks at: a real token is about 70 bytes.
const maxTokenLen = 256

// Parse decodes a token without checking it. It never panics and accepts exactly one
// spelling of each token (canonical decimal, unpadded base64url of 32 bytes).
func Parse(s string) (Token, error) {
	var t Token
	if s == "" {
		return t, ErrMissing
	}
	if len(s) > maxTokenLen {
		return t, ErrMalformed
	}
	ver, rest, ok := strings.Cut(s, ".")
	if !ok || ver != Version {
		return t, ErrMalformed
	}
	id, rest, ok := strings.Cut(rest, ".")
	if !ok || !validKeyID(id) {
		return t, ErrMalformed
	}
	exp, mac, ok := strings.Cut(rest, ".")
	if !ok || !canonicalUint(exp) {
		return t, ErrMalformed
	}
	n, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		return t, ErrMalformed
	}
	if len(mac) != base64.RawURLEncoding.EncodedLen(sha256.Size) {
		return t, ErrMalformed
	}
	if got, err := base64.RawURLEncoding.Strict().Decode(t.MAC[:], []byte(mac)); err != nil || got != sha256.Size {
		return t, ErrMalformed
	}
	t.KeyID, t.Expires = id, n
	return t, nil
}

// validKeyID: 1-20 of [0-9a-z] (purser uses decimal database ids).
func validKeyID(id string) bool {
	if id == "" || len(id) > 20 {
		return false
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		if !(b >= '0' && b <= '9' || b >= 'a' && b <= 'z') {
			return false
		}
	}
	return true
}

// canonicalUint: a decimal without sign or leading zeros, at most 19 digits.
func canonicalUint(s string) bool {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// domain separates purser's proofs from any other use of the same key.
const domain = "purser-proof\x00v1\x00"

// digest is HMAC(domain, key id, expiry, each claim length-prefixed): no two different
// claim sets encode alike. The result aliases m's scratch space until m is reused.
func (m *macState) digest(keyID string, exp int64, c *Claims) []byte {
	b := append(m.buf[:0], domain...)
	b = field(b, keyID)
	b = binary.BigEndian.AppendUint64(b, uint64(exp))
	for _, v := range [...]string{c.Decision, c.ReservationID, c.ReservedMicros, c.ReservedTokens, c.KeyID,
		c.Subjects, c.Provider, c.Flavor, c.Model} {
		b = field(b, v)
	}
	m.h.Write(b)
	if cap(b) <= 4096 {
		m.buf = b // keep a grown buffer, not a huge one
	}
	m.sum = m.h.Sum(m.sum[:0])
	return m.sum
}

func field(b []byte, v string) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}
