// Package pgcluster runs throwaway PostgreSQL servers for tests: a primary and streaming
// standbys, each in its own temporary directory on a free loopback port, with the
// operations a failover needs (make a standby synchronous, crash or fence a primary, promote
// a standby). Only tests import it.
//
// The servers are the machine's own PostgreSQL binaries (Debian: /usr/lib/postgresql/N/bin;
// set PURSER_PG_BINDIR to choose). initdb and postgres refuse to run as root, so under root
// every server runs as the "postgres" system user. Each postmaster is a child of the test
// process in its own process group with a parent-death signal, so a test that is killed
// leaves no server behind; Close (registered as a test cleanup) kills them and removes the
// directories.
//
// The servers run with fsync=off: a test crashes server processes, never the machine, so
// what reached the kernel survives, and replication reports WAL as flushed once written.
// Synchronous replication's guarantee (a commit is acknowledged only after the standby has
// the WAL) is unchanged.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDir finds the PostgreSQL server binaries: $PURSER_PG_BINDIR, else the newest
// /usr/lib/postgresql/<version>/bin holding initdb, else the directory of initdb on $PATH.
func BinDir() (string, error) {
	if d := os.Getenv("PURSER_PG_BINDIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("PURSER_PG_BINDIR=%s: %w", d, err)
		}
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	slices.SortFunc(matches, func(a, b string) int { return versionOf(b) - versionOf(a) })
	if len(matches) > 0 {
		return filepath.Dir(matches[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries (initdb): install them or set PURSER_PG_BINDIR")
}

func versionOf(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

// Cluster owns every server a test started.
type Cluster struct {
	bin  string
	root string
	cred *syscall.Credential // nil: run as this process's user
	logf func(string, ...any)

	mu      sync.Mutex
	servers []*Server
	closed  bool
}

// New prepares a cluster directory. Without server binaries the test fails when CI=true and
// is skipped otherwise (as pgtest does without a database).
func New(t testing.TB) *Cluster {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgcluster: %v", err)
		}
		t.Skipf("pgcluster: %v", err)
	}
	c, err := Open(bin, t.Logf)
	if err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Open prepares a cluster directory using the binaries in bin (see BinDir); logf, if not
// nil, receives a line per step. Close removes everything.
func Open(bin string, logf func(string, ...any)) (*Cluster, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := &Cluster{bin: bin, logf: logf}
	root, err := os.MkdirTemp("", "purser-pgcluster-")
	if err != nil {
		return nil, err
	}
	c.root = root
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(root)
			return nil, fmt.Errorf("running as root, and initdb refuses root: need a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(root, uid, gid); err != nil {
			os.RemoveAll(root)
			return nil, err
		}
	}
	if err := os.Chmod(root, 0o755); err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	return c, nil
}

// Close kills every server and removes the cluster directory.
func (c *Cluster) Close() {
	c.mu.Lock()
	c.closed = true
	servers := slices.Clone(c.servers)
	c.mu.Unlock()
	for _, s := range servers {
		s.kill()
	}
	_ = os.RemoveAll(c.root)
}

// Server is one PostgreSQL server (postmaster and its children).
type Server struct {
	Name string
	Dir  string
	Port int

	c    *Cluster
	cmd  *exec.Cmd
	done chan struct{}
	log  *tail
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// URL is a connection URL to database db as the superuser postgres (trust auth).
func (s *Server) URL(db string) string {
	return "postgres://postgres@" + s.Addr() + "/" + db + "?sslmode=disable"
}

// Hosts joins the servers' addresses for a multi-host URL: postgres://user@<Hosts>/db?...
func Hosts(servers ...*Server) string {
	addrs := make([]string, len(servers))
	for i, s := range servers {
		addrs[i] = s.Addr()
	}
	return strings.Join(addrs, ",")
}

// Log returns the tail of the server's log (stderr).
func (s *Server) Log() string { return s.log.String() }

// run runs a PostgreSQL tool as the cluster's user and returns its combined output.
func (c *Cluster) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, tool), args...)
	cmd.Env = c.env()
	cmd.Dir = c.root
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out, nil
}

func (c *Cluster) env() []string {
	env := []string{"LC_ALL=C", "TZ=UTC"}
	if p := os.Getenv("PATH"); p != "" {
		env = append(env, "PATH="+p)
	}
	return env
}

// settings are every server's configuration (see the package comment for fsync).
var settings = []string{
	"listen_addresses=127.0.0.1",
	"unix_socket_directories=",
	"fsync=off",
	"shared_buffers=16MB",
	"max_connections=80",
	"max_wal_senders=5",
	"wal_keep_size=128MB",
	"log_min_messages=warning",
	"log_line_prefix=%m [%p] ",
}

// InitPrimary creates and starts a new primary (initdb) and creates database db on it.
func (c *Cluster) InitPrimary(ctx context.Context, name, db string) (*Server, error) {
	dir := filepath.Join(c.root, name)
	if _, err := c.run(ctx, "initdb", "-D", dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"); err != nil {
		return nil, err
	}
	s, err := c.start(ctx, name, dir, 0)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", db, err)
	}
	return s, nil
}

// AddStandby clones primary (pg_basebackup, streaming) into a new streaming standby and
// starts it, on port (0: a free one). Its own synchronous_standby_names is empty, so once
// promoted it commits without waiting for a standby it does not have (as Patroni's
// non-strict synchronous mode and CloudNativePG's do until a new standby attaches).
func (c *Cluster) AddStandby(ctx context.Context, name string, primary *Server, port int) (*Server, error) {
	dir := filepath.Join(c.root, name)
	if _, err := c.run(ctx, "pg_basebackup", "-D", dir, "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port), "-U", "postgres",
		"-X", "stream", "-R", "-c", "fast", "--no-sync"); err != nil {
		return nil, err
	}
	auto := filepath.Join(dir, "postgresql.auto.conf")
	f, err := os.OpenFile(auto, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = fmt.Fprintf(f, "synchronous_standby_names = ''\ndefault_transaction_read_only = off\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return c.start(ctx, name, dir, port)
}

// start starts a postmaster on dir and waits until it accepts connections. With port 0 it
// picks a free port, and picks another if that one was taken meanwhile.
func (c *Cluster) start(ctx context.Context, name, dir string, port int) (*Server, error) {
	var lastErr error
	for range 5 {
		p := port
		if p == 0 {
			var err error
			if p, err = freePort(); err != nil {
				return nil, err
			}
		}
		s := &Server{Name: name, Dir: dir, Port: p, c: c, log: &tail{max: 64 << 10}, done: make(chan struct{})}
		err := s.start(ctx)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if port != 0 || !strings.Contains(err.Error(), "could not bind") && !strings.Contains(err.Error(), "already in use") {
			return nil, err
		}
	}
	return nil, lastErr
}

func (s *Server) start(ctx context.Context) error {
	c := s.c
	args := []string{"-D", s.Dir, "-p", strconv.Itoa(s.Port)}
	for _, kv := range settings {
		args = append(args, "-c", kv)
	}
	cmd := exec.Command(filepath.Join(c.bin, "postgres"), args...)
	cmd.Env = c.env()
	cmd.Dir = c.root
	cmd.Stdout, cmd.Stderr = s.log, s.log
	// Own process group (Crash kills it whole); SIGKILL if this process goes away.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("cluster closed")
	}
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("start postgres %s: %w", s.Name, err)
	}
	s.cmd = cmd
	c.servers = append(c.servers, s)
	c.mu.Unlock()
	go func() { _ = cmd.Wait(); close(s.done) }()

	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-s.done:
			return fmt.Errorf("postgres %s exited during start-up: %s", s.Name, s.Log())
		case <-ctx.Done():
			s.kill()
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, s.URL("postgres"))
		cancel()
		if err == nil {
			_ = conn.Close(ctx)
			c.logf("pgcluster: %s up on %s (%s)", s.Name, s.Addr(), s.Dir)
			return nil
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("postgres %s not accepting connections after 2m (%v): %s", s.Name, err, s.Log())
		}
		select {
		case <-s.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Exited reports whether the postmaster has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// kill ends the server's whole process group at once and waits for the postmaster.
func (s *Server) kill() {
	if s.cmd == nil || s.Exited() {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// Crash kills the postmaster and every backend at once (SIGKILL to the process group), as
// a machine or container dying would: clients see their connections reset, nothing is
// flushed or shut down cleanly.
func (s *Server) Crash() {
	s.c.logf("pgcluster: crashing %s", s.Name)
	s.kill()
}

// conn opens a connection to database db.
func (s *Server) conn(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, s.URL(db))
}

// exec runs statements, one at a time, on the postgres database.
func (s *Server) exec(ctx context.Context, stmts ...string) error {
	conn, err := s.conn(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	defer conn.Close(ctx)
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %s: %w", s.Name, q, err)
		}
	}
	return nil
}

// MakeSynchronous makes every commit on primary wait until a standby has flushed its WAL
// (synchronous_standby_names = '*', synchronous_commit stays on), then waits until a
// standby streams as the synchronous one.
func (s *Server) MakeSynchronous(ctx context.Context) error {
	if err := s.exec(ctx, `ALTER SYSTEM SET synchronous_standby_names = '*'`, `SELECT pg_reload_conf()`); err != nil {
		return err
	}
	return s.waitFor(ctx, "a synchronous standby streaming", `SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'`)
}

// Promote ends recovery on a standby and waits until it is a primary.
func (s *Server) Promote(ctx context.Context) error {
	s.c.logf("pgcluster: promoting %s", s.Name)
	conn, err := s.conn(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_promote(true, 120)`).Scan(&ok); err != nil {
		return fmt.Errorf("promote %s: %w", s.Name, err)
	}
	if !ok {
		return fmt.Errorf("promote %s: not promoted within 120s: %s", s.Name, s.Log())
	}
	return nil
}

// FenceReadOnly makes a running primary refuse writes without stopping it: every new
// transaction is read-only (default_transaction_read_only = on, applied by a reload; open
// sessions pick it up at their next statement), so writes fail with SQLSTATE 25006 while
// reads and connections still succeed — the old primary of a planned switchover before it
// is demoted.
//
// It returns once a new session is read-only: the postmaster has reloaded and has signalled
// every backend, so an open session's next statement runs read-only too.
func (s *Server) FenceReadOnly(ctx context.Context) error {
	s.c.logf("pgcluster: fencing %s read-only", s.Name)
	if err := s.exec(ctx, `ALTER SYSTEM SET default_transaction_read_only = on`, `SELECT pg_reload_conf()`); err != nil {
		return err
	}
	return s.waitFor(ctx, "read-only sessions", `SELECT current_setting('default_transaction_read_only') = 'on'`)
}

// WaitCaughtUp waits until every standby of this primary has replayed everything the
// primary has written so far.
func (s *Server) WaitCaughtUp(ctx context.Context) error {
	conn, err := s.conn(ctx, "postgres")
	if err != nil {
		return err
	}
	var lsn string
	err = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	return s.waitFor(ctx, "standbys replayed "+lsn,
		`SELECT count(*) > 0 AND bool_and(replay_lsn >= '`+lsn+`'::pg_lsn) FROM pg_stat_replication`)
}

// waitFor polls a boolean query on the postgres database until it is true.
func (s *Server) waitFor(ctx context.Context, what, query string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		conn, err := s.conn(ctx, "postgres")
		if err == nil {
			var ok bool
			err = conn.QueryRow(ctx, query).Scan(&ok)
			conn.Close(ctx)
			if err == nil && ok {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not reached within 2m (last error: %v): %s", s.Name, what, err, s.Log())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b.Write(p)
	if over := t.b.Len() - t.max; over > 0 {
		t.b.Next(over)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b.String()
}
