package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// AutovacuumOff reports whether the server runs without autovacuum.
func AutovacuumOff(ctx context.Context, db *pgxpool.Pool) (bool, error) {
	var v string
	err := db.QueryRow(ctx, `SELECT current_setting('autovacuum')`).Scan(&v)
	return v == "off", err
}

// Autovacuum does for one database what PostgreSQL's autovacuum daemon would do with the
// server's thresholds (defaults: ANALYZE after 50 + 10% of the rows changed, VACUUM after
// 50 + 20% dead or 1000 + 20% inserted), checked every interval, with autovacuum's cost-based
// throttling, visiting the database every autovacuum_naptime. It exists for servers configured with autovacuum=off: there, a table is never
// analyzed, and a plan a session cached while a table was small (a sequential scan) is kept
// while the table grows, which is not how a production server behaves.
type Autovacuum struct {
	Analyzes, Vacuums atomic.Int64
	Errors            atomic.Int64
	interval          atomic.Int64 // ns, set by Run
}

// Interval is the check interval in use (0 before Run read the settings).
func (a *Autovacuum) Interval() time.Duration { return time.Duration(a.interval.Load()) }

type avSettings struct {
	analyzeBase, analyzeScale float64
	vacuumBase, vacuumScale   float64
	insertBase, insertScale   float64
	costDelay, costLimit      string
}

// Run checks and acts every interval (<= 0: the server's autovacuum_naptime, how often the
// real launcher visits a database) until ctx ends.
func (a *Autovacuum) Run(ctx context.Context, db *pgxpool.Pool, interval time.Duration) error {
	var s avSettings
	var naptime float64
	err := db.QueryRow(ctx, `SELECT extract(epoch FROM current_setting('autovacuum_naptime')::interval)::float8,
		current_setting('autovacuum_analyze_threshold')::float8,
		current_setting('autovacuum_analyze_scale_factor')::float8,
		current_setting('autovacuum_vacuum_threshold')::float8,
		current_setting('autovacuum_vacuum_scale_factor')::float8,
		current_setting('autovacuum_vacuum_insert_threshold')::float8,
		current_setting('autovacuum_vacuum_insert_scale_factor')::float8,
		current_setting('autovacuum_vacuum_cost_delay'),
		current_setting('autovacuum_vacuum_cost_limit')`).Scan(
		&naptime, &s.analyzeBase, &s.analyzeScale, &s.vacuumBase, &s.vacuumScale, &s.insertBase, &s.insertScale, &s.costDelay, &s.costLimit)
	if err != nil {
		return fmt.Errorf("autovacuum settings: %w", err)
	}
	if interval <= 0 {
		interval = time.Duration(naptime * float64(time.Second))
	}
	a.interval.Store(int64(interval))
	if s.costLimit == "-1" {
		s.costLimit = "200" // autovacuum_vacuum_cost_limit -1 means vacuum_cost_limit's default
	}
	conn, err := db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET vacuum_cost_delay = '"+s.costDelay+"'"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SET vacuum_cost_limit = "+s.costLimit); err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := a.once(ctx, conn.Conn(), &s); err != nil && ctx.Err() == nil {
			a.Errors.Add(1)
		}
	}
}

func (a *Autovacuum) once(ctx context.Context, conn *pgx.Conn, s *avSettings) error {
	rows, err := conn.Query(ctx, `SELECT s.relname, greatest(c.reltuples, 0)::float8, s.n_mod_since_analyze::float8,
		s.n_dead_tup::float8, s.n_ins_since_vacuum::float8
		FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid`)
	if err != nil {
		return err
	}
	type table struct {
		name                   string
		tuples, mod, dead, ins float64
	}
	var ts []table
	for rows.Next() {
		var t table
		if err := rows.Scan(&t.name, &t.tuples, &t.mod, &t.dead, &t.ins); err != nil {
			rows.Close()
			return err
		}
		ts = append(ts, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, t := range ts {
		id := pgx.Identifier{t.name}.Sanitize()
		if t.dead > s.vacuumBase+s.vacuumScale*t.tuples || t.ins > s.insertBase+s.insertScale*t.tuples {
			if _, err := conn.Exec(ctx, "VACUUM "+id); err != nil {
				return err
			}
			a.Vacuums.Add(1)
		}
		if t.mod > s.analyzeBase+s.analyzeScale*t.tuples {
			if _, err := conn.Exec(ctx, "ANALYZE "+id); err != nil {
				return err
			}
			a.Analyzes.Add(1)
		}
	}
	return nil
}
