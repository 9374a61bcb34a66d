package envoysim

import (
	"errors"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
)

// BlockAccessLog makes every access-log stream establishment fail while on, as when the
// sink has no healthy host: entries stay buffered (retried at each flush) and, once the
// buffer is full, new ones are dropped (reference 4.5 items 3-4). Turning it on also breaks
// the open streams, like the sink's connections going away.
func (s *Sim) BlockAccessLog(on bool) {
	s.alsFaults.mu.Lock()
	s.alsFaults.blocked = on
	s.alsFaults.mu.Unlock()
	if on {
		s.BreakAccessLogStreams()
	}
}

func (s *Sim) alsBlocked() bool {
	s.alsFaults.mu.Lock()
	defer s.alsFaults.mu.Unlock()
	return s.alsFaults.blocked
}

// LoseAccessLogBatches makes the next n batches be handed to a stream that then breaks
// before the server reads them: lost for good, the stream replaced at the next flush with a
// new identifier message (reference 4.5 item 5, 8.9).
func (s *Sim) LoseAccessLogBatches(n int) {
	s.alsFaults.mu.Lock()
	s.alsFaults.loseNext += n
	s.alsFaults.mu.Unlock()
}

// DuplicateAccessLogBatches makes the next n batches be sent twice on their stream.
func (s *Sim) DuplicateAccessLogBatches(n int) {
	s.alsFaults.mu.Lock()
	s.alsFaults.dupNext += n
	s.alsFaults.mu.Unlock()
}

// BreakAccessLogStreams resets every worker's stream now; batches in flight may be lost.
func (s *Sim) BreakAccessLogStreams() {
	for _, w := range s.workers {
		for _, l := range w.loggers {
			l.breakAll()
		}
	}
}

// FlushAccessLogs flushes every worker's buffer now (as the flush timer would).
func (s *Sim) FlushAccessLogs() {
	for _, w := range s.workers {
		for _, l := range w.loggers {
			l.flush()
		}
	}
}

// ReplayAccessLogs sends every entry logged so far once more, in one message per worker,
// on that worker's stream (a new one if needed): duplicates of delivered entries, as a second
// logger or a replaying proxy would produce.
func (s *Sim) ReplayAccessLogs() error {
	entries := s.Entries()
	if len(entries) == 0 || len(s.workers) == 0 {
		return nil
	}
	var errs []error
	per := make([][]*alsdata.HTTPAccessLogEntry, len(s.workers))
	for i, e := range entries {
		per[i%len(s.workers)] = append(per[i%len(s.workers)], e)
	}
	for i, w := range s.workers {
		if len(per[i]) == 0 {
			continue
		}
		for _, l := range w.loggers {
			if err := l.replay(per[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
