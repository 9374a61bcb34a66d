package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// SigningKeyRow is a key that signs Check answers (see migrations/007).
type SigningKeyRow struct {
	ID          string
	Secret      []byte
	ActivatesAt time.Time
	RetiresAt   time.Time
	ExpiresAt   time.Time
}

// SigningKeys returns every key that still verifies (expires_at in the future, database clock).
func (s *Store) SigningKeys(ctx context.Context) ([]SigningKeyRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, secret, activates_at, retires_at, expires_at FROM signing_keys
		WHERE expires_at > now() ORDER BY activates_at DESC`)
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", interpret(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SigningKeyRow, error) {
		var k SigningKeyRow
		var id int64
		err := r.Scan(&id, &k.Secret, &k.ActivatesAt, &k.RetiresAt, &k.ExpiresAt)
		k.ID = strconv.FormatInt(id, 10)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", interpret(err))
	}
	return out, nil
}

// Rotation says how signing keys succeed each other.
type Rotation struct {
	Every  time.Duration // a key is the newest for this long
	Lead   time.Duration // the next key exists this long before it activates, and the old one signs this long after
	Verify time.Duration // a key verifies this long after it stops signing
	// Secret returns a fresh random secret.
	Secret func() ([]byte, error)
}

// RotateSigningKeys makes sure a key signs now and, when the newest key is due for
// succession, inserts the next one Lead ahead of its activation; it deletes keys that no
// longer verify. Replicas rotate concurrently: a transaction-scoped advisory lock serialises
// them, and the database clock decides. It reports whether it inserted a key.
func (s *Store) RotateSigningKeys(ctx context.Context, r Rotation) (bool, error) {
	inserted := false
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.signing_keys'))`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM signing_keys WHERE expires_at <= statement_timestamp()`); err != nil {
			return err
		}
		var now time.Time
		var newest, activeUntil *time.Time
		// The clock after the lock, not now() (the transaction's start): a replica that began
		// before another's key was committed, and waited for the lock meanwhile, must see that
		// key as signing already, not make a second one.
		err := tx.QueryRow(ctx, `SELECT t.now, (SELECT max(activates_at) FROM signing_keys),
			(SELECT max(retires_at) FROM signing_keys WHERE activates_at <= t.now AND retires_at > t.now)
			FROM (SELECT statement_timestamp() AS now) t`).Scan(&now, &newest, &activeUntil)
		if err != nil {
			return err
		}
		var at time.Time
		switch {
		case activeUntil == nil:
			at = now // nothing signs now: a key signs at once
		case newest != nil && !newest.After(now) && !now.Before(newest.Add(r.Every-r.Lead)):
			at = newest.Add(r.Every) // due: the successor activates Lead from now at the earliest
			if min := now.Add(r.Lead); at.Before(min) {
				at = min
			}
		default:
			return nil
		}
		secret, err := r.Secret()
		if err != nil {
			return err
		}
		retires := at.Add(r.Every + r.Lead)
		if _, err := tx.Exec(ctx, `INSERT INTO signing_keys (secret, activates_at, retires_at, expires_at) VALUES ($1, $2, $3, $4)`,
			secret, at, retires, retires.Add(r.Verify)); err != nil {
			return err
		}
		inserted = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("rotate signing keys: %w", interpret(err))
	}
	return inserted, nil
}
