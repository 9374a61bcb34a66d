package budget

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"
)

// maxSecretBody is the longest base62 body NewSecret produces: 256 bits need 43 digits.
const maxSecretBody = 43

// ValidSecret reports whether s has the shape of a purser key secret: SecretPrefix, then 1 to
// 43 characters of [0-9A-Za-z] (a 256-bit number in base 62, as NewSecret writes it). Anything
// else is refused before any cache or database work.
func ValidSecret(s string) bool {
	if len(s) <= len(SecretPrefix) || len(s) > len(SecretPrefix)+maxSecretBody || s[:len(SecretPrefix)] != SecretPrefix {
		return false
	}
	for i := len(SecretPrefix); i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// keyIndex is the set of every stored key's secret hash (a sorted slice: 32 bytes a key, a
// hundred thousand keys in 3 MB), so that a secret nobody issued costs no database query.
// It only ever denies faster (design invariant 6): a hash it holds still goes through the
// cache and the database, which decide revocation and expiry.
type keyIndex struct {
	hashes atomic.Pointer[[][32]byte] // nil until the first load
	dirty  chan struct{}              // a change was notified: reload (coalesced)
}

func newKeyIndex() keyIndex { return keyIndex{dirty: make(chan struct{}, 1)} }

// lookup reports whether h is a stored key's hash, and whether the index was ever loaded.
func (x *keyIndex) lookup(h [32]byte) (known, loaded bool) {
	p := x.hashes.Load()
	if p == nil {
		return false, false
	}
	_, found := slices.BinarySearchFunc(*p, h, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	return found, true
}

// add inserts h (a key this replica just created or rotated) without waiting for the reload.
func (x *keyIndex) add(h [32]byte) {
	for {
		p := x.hashes.Load()
		if p == nil {
			return // not loaded yet: the first load will include it
		}
		i, found := slices.BinarySearchFunc(*p, h, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
		if found {
			return
		}
		next := slices.Insert(slices.Clone(*p), i, h)
		if x.hashes.CompareAndSwap(p, &next) {
			return
		}
	}
}

func (x *keyIndex) markDirty() {
	select {
	case x.dirty <- struct{}{}:
	default:
	}
}

// loadKeyIndex reads every key hash.
func (s *Service) loadKeyIndex(ctx context.Context) error {
	hs, err := s.db.KeyHashes(ctx)
	if err != nil {
		return mapErr(err)
	}
	slices.SortFunc(hs, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	s.keyIdx.hashes.Store(&hs)
	return nil
}

// keyIndexDebounce coalesces bursts of key changes (a bulk `purser apply`) into one reload.
const keyIndexDebounce = 50 * time.Millisecond

// runKeyIndex reloads the index whenever a key change was notified, until ctx ends.
func (s *Service) runKeyIndex(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.keyIdx.dirty:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(keyIndexDebounce):
		}
		// A notification arriving during the load marks the index dirty again.
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.loadKeyIndex(lctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "key index reload failed; unknown keys go to the rate-limited lookup",
				slog.String("error", err.Error()))
			s.keyIdx.markDirty()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}
