package pricing

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultWatchInterval is how often a Watcher polls its file when WatcherConfig.Interval is 0.
const DefaultWatchInterval = 5 * time.Second

// WatcherConfig holds a Watcher's optional knobs; the zero value means defaults.
type WatcherConfig struct {
	// Interval between polls of the file (default DefaultWatchInterval).
	Interval time.Duration
	// Logger receives one line per reload or failed reload (default: discard).
	Logger *slog.Logger
	// OnReload is called after a changed file was loaded and swapped in.
	OnReload func(*Catalog)
	// OnError is called when a changed file could not be read or loaded; the previous catalog
	// stays in force.
	OnError func(error)
}

// Watcher serves the catalog built from a base catalog and an overrides file, and reloads it
// when the file changes. Catalog is lock-free; reloads keep the last good catalog on error.
type Watcher struct {
	base *Catalog
	path string
	cfg  WatcherConfig

	cur      atomic.Pointer[Catalog]
	failures atomic.Int64

	mu   sync.Mutex // serialises reloads; guards last
	last fileState
}

// fileState identifies what the watcher last saw at its path.
type fileState struct {
	statErr string
	mod     time.Time
	size    int64
	sum     [32]byte
}

// NewWatcher loads the overrides file at path over base and returns a Watcher serving the
// result. An unreadable or invalid file is an error here (fail at start-up); later reload
// failures only keep the previous catalog.
func NewWatcher(base *Catalog, path string, cfg WatcherConfig) (*Watcher, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultWatchInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{base: base, path: path, cfg: cfg}
	st, data, err := w.read()
	if err != nil {
		return nil, fmt.Errorf("price overrides: %w", err)
	}
	c, err := Load(base, bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("price overrides %s: %w", path, err)
	}
	w.last = st
	w.cur.Store(c)
	return w, nil
}

// Catalog returns the catalog in force.
func (w *Watcher) Catalog() *Catalog { return w.cur.Load() }

// Failures returns the number of failed reloads so far.
func (w *Watcher) Failures() int64 { return w.failures.Load() }

// Reload re-reads the file if its modification time, size or content changed since the last
// attempt, and swaps the new catalog in when it loads. It reports whether a new catalog was
// installed. A failure is logged, counted, passed to OnError and returned; the same broken
// file is reported once, not at every poll.
func (w *Watcher) Reload(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	fi, err := os.Stat(w.path)
	if err != nil {
		st := fileState{statErr: err.Error()}
		if st == w.last {
			return false, nil
		}
		w.last = st
		return false, w.fail(fmt.Errorf("reload price overrides: %w", err))
	}
	if w.last.statErr == "" && fi.ModTime().Equal(w.last.mod) && fi.Size() == w.last.size {
		return false, nil
	}
	st, data, err := w.read()
	if err != nil {
		w.last = fileState{statErr: err.Error()}
		return false, w.fail(fmt.Errorf("reload price overrides: %w", err))
	}
	prevSum := w.last.sum
	prevOK := w.last.statErr == ""
	w.last = st
	if prevOK && st.sum == prevSum {
		return false, nil // touched, same content
	}
	c, err := Load(w.base, bytes.NewReader(data))
	if err != nil {
		return false, w.fail(fmt.Errorf("reload price overrides %s: %w", w.path, err))
	}
	w.cur.Store(c)
	w.cfg.Logger.LogAttrs(ctx, slog.LevelInfo, "price overrides reloaded",
		slog.String("path", w.path), slog.String("price_version", c.Version()))
	if w.cfg.OnReload != nil {
		w.cfg.OnReload(c)
	}
	return true, nil
}

func (w *Watcher) fail(err error) error {
	w.failures.Add(1)
	w.cfg.Logger.LogAttrs(context.Background(), slog.LevelError, "price overrides not reloaded; previous prices stay in force",
		slog.String("path", w.path), slog.String("error", err.Error()),
		slog.String("price_version", w.Catalog().Version()))
	if w.cfg.OnError != nil {
		w.cfg.OnError(err)
	}
	return err
}

func (w *Watcher) read() (fileState, []byte, error) {
	f, err := os.Open(w.path)
	if err != nil {
		return fileState{}, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileState{}, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxOverridesSize+1))
	if err != nil {
		return fileState{}, nil, err
	}
	return fileState{mod: fi.ModTime(), size: fi.Size(), sum: sha256.Sum256(data)}, data, nil
}

// Run polls the file every Interval until ctx is done, then returns nil. Failures are
// reported as Reload describes and never stop the loop.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_, _ = w.Reload(ctx) // reported through the logger, OnError and Failures
		}
	}
}
