package proof_test

import (
	"bytes"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/purser-dev/purser/proof"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func key(t testing.TB, id string, activates time.Time) proof.Key {
	t.Helper()
	s := make([]byte, proof.KeySize)
	_, err := rand.Read(s)
	require.NoError(t, err)
	return proof.Key{ID: id, Secret: s, ActivatesAt: activates, RetiresAt: activates.Add(24 * time.Hour), ExpiresAt: activates.Add(72 * time.Hour)}
}

func claims() proof.Claims {
	return proof.Claims{Decision: "reserved", ReservationID: "018f0000-0000-7000-8000-000000000001",
		ReservedMicros: "160000", ReservedTokens: "4196", KeyID: "key_abc", Provider: "openai", Flavor: "chat", Model: "gpt-4o"}
}

func TestSignVerify(t *testing.T) {
	var r proof.Keyring
	require.NoError(t, r.Set([]proof.Key{key(t, "1", t0)}))
	c := claims()
	tok, err := r.Sign(&c, t0.Add(time.Minute), t0.Add(time.Hour))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(tok, "1.1."), "version and key id lead the token: %s", tok)
	require.NoError(t, r.Verify(&c, tok, t0.Add(2*time.Minute)), "the signer's own proof verifies")

	// Every claim is covered: changing any one of them breaks the proof.
	mutations := map[string]func(*proof.Claims){
		"decision":        func(c *proof.Claims) { c.Decision = "unverified" },
		"reservation_id":  func(c *proof.Claims) { c.ReservationID = "018f0000-0000-7000-8000-000000000002" },
		"reserved_micros": func(c *proof.Claims) { c.ReservedMicros = "0" },
		"reserved_tokens": func(c *proof.Claims) { c.ReservedTokens = "1" },
		"key_id":          func(c *proof.Claims) { c.KeyID = "key_other" },
		"subjects":        func(c *proof.Claims) { c.Subjects = "user:alice" },
		"provider":        func(c *proof.Claims) { c.Provider = "azure" },
		"flavor":          func(c *proof.Claims) { c.Flavor = "responses" },
		"model":           func(c *proof.Claims) { c.Model = "gpt-4o-mini" },
	}
	for name, mut := range mutations {
		m := claims()
		mut(&m)
		require.ErrorIs(t, r.Verify(&m, tok, t0.Add(2*time.Minute)), proof.ErrBadMAC, "changed %s must not verify", name)
	}
	// Moving bytes between adjacent claims keeps their concatenation but not the proof.
	shifted := claims()
	shifted.Provider, shifted.Flavor = "openaic", "hat"
	require.ErrorIs(t, r.Verify(&shifted, tok, t0.Add(2*time.Minute)), proof.ErrBadMAC, "length-prefixed fields")

	// The expiry is covered too: rewriting it in the token breaks the MAC.
	parts := strings.Split(tok, ".")
	parts[2] = "9999999999"
	require.ErrorIs(t, r.Verify(&c, strings.Join(parts, "."), t0.Add(2*time.Minute)), proof.ErrBadMAC)

	require.ErrorIs(t, r.Verify(&c, tok, t0.Add(time.Hour+time.Second)), proof.ErrExpired, "refused after its expiry")
	require.ErrorIs(t, r.Verify(&c, "", t0), proof.ErrMissing)
	require.ErrorIs(t, r.Verify(&c, "1.2."+parts[2]+"."+parts[3], t0), proof.ErrUnknownKey)
}

// Another replica with the same keys verifies; one with a different secret under the same id
// does not.
func TestVerifyAcrossReplicas(t *testing.T) {
	k := key(t, "7", t0)
	var a, b, forger proof.Keyring
	require.NoError(t, a.Set([]proof.Key{k}))
	require.NoError(t, b.Set([]proof.Key{k}))
	other := key(t, "7", t0)
	require.NoError(t, forger.Set([]proof.Key{other}))
	c := claims()
	tok, err := a.Sign(&c, t0, t0.Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, b.Verify(&c, tok, t0), "replica b verifies replica a's proof")
	forged, err := forger.Sign(&c, t0, t0.Add(time.Hour))
	require.NoError(t, err)
	require.ErrorIs(t, a.Verify(&c, forged, t0), proof.ErrBadMAC, "a guessed key under a known id")
}

// Rotation: the new key signs once active; the old one still verifies what it signed until
// it expires, so reservations pending across a rotation settle.
func TestRotation(t *testing.T) {
	old := key(t, "1", t0)
	next := key(t, "2", t0.Add(23*time.Hour))
	var r proof.Keyring
	require.NoError(t, r.Set([]proof.Key{old, next}))
	c := claims()

	before, err := r.Sign(&c, t0.Add(22*time.Hour), t0.Add(23*time.Hour))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(before, "1.1."), "the old key signs until the next one activates")
	after, err := r.Sign(&c, t0.Add(23*time.Hour+time.Second), t0.Add(30*time.Hour))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(after, "1.2."), "the newest active key signs")

	// A reservation signed just before the old key retired (24h), pending for a 15-minute TTL
	// plus late entries, still verifies after the rotation.
	late, err := r.Sign(&c, t0.Add(23*time.Hour-time.Minute), t0.Add(25*time.Hour))
	require.NoError(t, err)
	require.NoError(t, r.Verify(&c, late, t0.Add(24*time.Hour+30*time.Minute)), "pending across the rotation")
	// A ring reloaded without the old key refuses it (the key expired and was removed).
	require.NoError(t, r.Set([]proof.Key{next}))
	require.ErrorIs(t, r.Verify(&c, late, t0.Add(24*time.Hour+30*time.Minute)), proof.ErrUnknownKey)

	var empty proof.Keyring
	_, err = empty.Sign(&c, t0, t0.Add(time.Hour))
	require.ErrorIs(t, err, proof.ErrNoKey)
	require.NoError(t, r.Set([]proof.Key{old}))
	_, err = r.Sign(&c, t0.Add(25*time.Hour), t0.Add(26*time.Hour))
	require.ErrorIs(t, err, proof.ErrNoKey, "a retired key verifies but never signs")
}

func TestSetSkipsBadKeys(t *testing.T) {
	var r proof.Keyring
	good := key(t, "3", t0)
	err := r.Set([]proof.Key{{ID: "4", Secret: []byte("short")}, {ID: "bad id", Secret: good.Secret}, good})
	require.Error(t, err, "the malformed keys are reported")
	require.Equal(t, 1, r.Len(), "and skipped")
	require.True(t, r.Has("3"))
	// The ring keeps its own copy of the secret.
	c := claims()
	tok, err := r.Sign(&c, t0, t0.Add(time.Minute))
	require.NoError(t, err)
	copy(good.Secret, bytes.Repeat([]byte{0}, proof.KeySize))
	require.NoError(t, r.Verify(&c, tok, t0))
}

func TestParse(t *testing.T) {
	var r proof.Keyring
	require.NoError(t, r.Set([]proof.Key{key(t, "12", t0)}))
	c := claims()
	tok, err := r.Sign(&c, t0, t0.Add(time.Hour))
	require.NoError(t, err)
	got, err := proof.Parse(tok)
	require.NoError(t, err)
	require.Equal(t, "12", got.KeyID)
	require.Equal(t, t0.Add(time.Hour).Unix(), got.Expires)

	parts := strings.Split(tok, ".")
	for name, bad := range map[string]string{
		"other version":    "2." + strings.Join(parts[1:], "."),
		"no mac":           strings.Join(parts[:3], "."),
		"padded mac":       strings.Join(parts[:3], ".") + "." + parts[3] + "=",
		"std base64":       strings.Join(parts[:3], ".") + "." + strings.NewReplacer("-", "+", "_", "/").Replace(parts[3]) + "+",
		"short mac":        strings.Join(parts[:3], ".") + "." + parts[3][:40],
		"leading zero exp": parts[0] + "." + parts[1] + ".0" + parts[2] + "." + parts[3],
		"signed exp":       parts[0] + "." + parts[1] + ".+" + parts[2] + "." + parts[3],
		"upper-case id":    parts[0] + ".A." + parts[2] + "." + parts[3],
		"empty id":         parts[0] + ".." + parts[2] + "." + parts[3],
		"extra part":       tok + ".x",
		"huge":             tok + strings.Repeat("A", 300),
	} {
		_, err := proof.Parse(bad)
		require.ErrorIs(t, err, proof.ErrMalformed, name)
		require.Equal(t, "malformed", proof.Reason(r.Verify(&c, bad, t0)), name)
	}
}

func TestConcurrentSignVerify(t *testing.T) {
	var r proof.Keyring
	keys := []proof.Key{key(t, "1", t0), key(t, "2", t0.Add(time.Hour))}
	require.NoError(t, r.Set(keys))
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := claims()
			c.KeyID = string(rune('a' + g))
			for i := range 200 {
				now := t0.Add(time.Duration(i) * time.Minute)
				tok, err := r.Sign(&c, now, now.Add(time.Hour))
				if err != nil {
					t.Errorf("sign: %v", err)
					return
				}
				if err := r.Verify(&c, tok, now); err != nil {
					t.Errorf("verify: %v", err)
					return
				}
				if i%50 == 0 {
					_ = r.Set(keys) // a reload with the same keys never breaks a proof in flight
				}
			}
		}()
	}
	wg.Wait()
}

// FuzzVerify: any token and claims give an answer, never a panic, and only the signer's
// own token for exactly its claims verifies.
func FuzzVerify(f *testing.F) {
	var r proof.Keyring
	if err := r.Set([]proof.Key{key(f, "1", t0)}); err != nil {
		f.Fatal(err)
	}
	c := claims()
	tok, err := r.Sign(&c, t0, t0.Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok, c.ReservationID, c.ReservedMicros)
	f.Add("1.1.1.", "", "")
	f.Add("1.18446744073709551615.99999999999999999999.AAAA", "x", "-1")
	f.Add("1.1."+strings.Repeat("9", 19)+"."+strings.Repeat("A", 43), "", "")
	f.Fuzz(func(t *testing.T, token, reservation, micros string) {
		got := claims()
		got.ReservationID, got.ReservedMicros = reservation, micros
		err := r.Verify(&got, token, t0)
		if err == nil && (token != tok || got != c) {
			t.Fatalf("verified a token or claims purser never signed: %q %+v", token, got)
		}
		if _, perr := proof.Parse(token); perr != nil && err == nil {
			t.Fatalf("verified an unparsable token %q", token)
		}
	})
}
