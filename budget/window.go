package budget

import (
	"fmt"
	"time"
)

// WindowKind is how a budget's spend is grouped over time.
type WindowKind string

// Window kinds.
const (
	Minute   WindowKind = "minute" // the clock minute (in the budget's time zone)
	Hour     WindowKind = "hour"   // the clock hour (in the budget's time zone)
	Day      WindowKind = "day"
	Week     WindowKind = "week" // ISO week: Monday 00:00 to Monday 00:00
	Month    WindowKind = "month"
	Quarter  WindowKind = "quarter"
	Year     WindowKind = "year"
	Rolling  WindowKind = "rolling"
	Lifetime WindowKind = "lifetime"
)

// RollingBuckets is how many buckets of counter rows a rolling window's length is split into.
// A rolling window of length D counts the current bucket and the RollingBuckets whole buckets
// before it, so it counts the spend of at least the last D and at most D plus one bucket
// (D/RollingBuckets): the approximation errs against spending, never for it.
const RollingBuckets = 24

// MinRolling and MaxRolling bound a rolling window's length.
const (
	MinRolling = time.Minute
	MaxRolling = 400 * 24 * time.Hour
)

var (
	lifetimeStart = time.Unix(0, 0).UTC()
	lifetimeEnd   = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
)

// WindowSpec describes a budget's window.
type WindowSpec struct {
	Kind WindowKind
	// Location is the IANA time zone calendar windows follow (UTC when nil).
	Location *time.Location
	// AnchorDay (1-31, 0 = 1) is the day of the month a month/quarter/year window starts on; a
	// day past the month's end falls on its last day (31 → 30 April, 28/29 February).
	AnchorDay int
	// Rolling is the length of a rolling window.
	Rolling time.Duration
}

// Window is one concrete window: spend is counted in [Start, End). For rolling windows Start
// and End delimit the current bucket and RollFrom is the start of the oldest bucket counted.
type Window struct {
	Start    time.Time
	End      time.Time
	RollFrom time.Time // zero unless rolling
}

// Validate checks a spec. An error about the anchor day is a *FieldError naming anchor_day.
func (w WindowSpec) Validate() error {
	switch w.Kind {
	case Minute, Hour, Day, Week, Month, Quarter, Year, Lifetime:
		if w.Rolling != 0 {
			return fmt.Errorf("window %q cannot have a rolling duration", w.Kind)
		}
	case Rolling:
		if w.Rolling < MinRolling || w.Rolling > MaxRolling {
			return fmt.Errorf("rolling window must be between %s and %s, got %s", MinRolling, MaxRolling, w.Rolling)
		}
		if w.Rolling%time.Second != 0 {
			return fmt.Errorf("rolling window must be a whole number of seconds, got %s", w.Rolling)
		}
	default:
		return fmt.Errorf("unknown window %q (want minute, hour, day, week, month, quarter, year, lifetime or a duration such as 72h)", w.Kind)
	}
	if w.AnchorDay < 0 || w.AnchorDay > 31 {
		return fieldErr("anchor_day", "anchor day must be 1-31, got %d", w.AnchorDay)
	}
	if w.AnchorDay > 1 && w.Kind != Month && w.Kind != Quarter && w.Kind != Year {
		return fieldErr("anchor_day", "anchor day applies to month, quarter and year windows, not %q", w.Kind)
	}
	return nil
}

// BucketSize is the length of one rolling bucket (a whole number of seconds).
func (w WindowSpec) BucketSize() time.Duration {
	b := (w.Rolling + RollingBuckets - 1) / RollingBuckets
	if r := b % time.Second; r != 0 {
		b += time.Second - r
	}
	return b
}

// At returns the window containing t. resetAt (zero if never) starts a fresh window at that
// instant: spend before it no longer counts against the limit.
func (w WindowSpec) At(t time.Time, resetAt time.Time) Window {
	loc := w.Location
	if loc == nil {
		loc = time.UTC
	}
	var win Window
	switch w.Kind {
	case Lifetime:
		win = Window{Start: lifetimeStart, End: lifetimeEnd}
	case Rolling:
		b := w.BucketSize()
		start := t.Truncate(b) // Truncate works on absolute time: buckets align to the Unix epoch
		// Count the current bucket plus ceil(D/b) whole buckets before it: the counted span is
		// at least D and at most D plus one bucket.
		n := time.Duration((w.Rolling + b - 1) / b)
		win = Window{Start: start, End: start.Add(b), RollFrom: start.Add(-n * b)}
		if !resetAt.IsZero() && !resetAt.After(t) {
			if resetAt.After(win.RollFrom) {
				win.RollFrom = resetAt
			}
			if resetAt.After(win.Start) {
				win.Start = resetAt
			}
		}
		return win
	case Minute, Hour:
		// The clock minute or hour of t in loc, computed on absolute time with t's offset:
		// an hour of a +05:30 zone starts at :30 UTC, and a repeated or skipped wall-clock
		// hour at a DST change cannot produce a window that does not contain t.
		step := time.Minute
		if w.Kind == Hour {
			step = time.Hour
		}
		_, off := t.In(loc).Zone()
		shift := time.Duration(off) * time.Second
		start := t.Add(shift).Truncate(step).Add(-shift)
		win = Window{Start: start, End: start.Add(step)}
	default:
		lt := t.In(loc)
		start := w.calendarStart(lt, loc)
		win = Window{Start: start, End: w.next(start, loc)}
	}
	if !resetAt.IsZero() && resetAt.After(win.Start) && !resetAt.After(t) {
		win.Start = resetAt
	}
	return win
}

// calendarStart returns the start of the calendar window containing lt (in loc).
func (w WindowSpec) calendarStart(lt time.Time, loc *time.Location) time.Time {
	switch w.Kind {
	case Day:
		return time.Date(lt.Year(), lt.Month(), lt.Day(), 0, 0, 0, 0, loc)
	case Week:
		d := time.Date(lt.Year(), lt.Month(), lt.Day(), 0, 0, 0, 0, loc)
		offset := (int(d.Weekday()) + 6) % 7 // days since Monday
		return d.AddDate(0, 0, -offset)
	}
	step := w.months()
	// Candidate periods start in months aligned to the step (Jan/Apr/Jul/Oct for quarters).
	m := int(lt.Month()) - 1
	m -= m % step
	cand := anchorDate(lt.Year(), time.Month(m+1), w.AnchorDay, loc)
	if lt.Before(cand) {
		cand = anchorDate(lt.Year(), time.Month(m+1-step), w.AnchorDay, loc)
	}
	return cand
}

// next returns the start of the window after the one starting at start.
func (w WindowSpec) next(start time.Time, loc *time.Location) time.Time {
	switch w.Kind {
	case Day:
		return time.Date(start.Year(), start.Month(), start.Day()+1, 0, 0, 0, 0, loc)
	case Week:
		return time.Date(start.Year(), start.Month(), start.Day()+7, 0, 0, 0, 0, loc)
	}
	return anchorDate(start.Year(), start.Month()+time.Month(w.months()), w.AnchorDay, loc)
}

func (w WindowSpec) months() int {
	switch w.Kind {
	case Quarter:
		return 3
	case Year:
		return 12
	}
	return 1
}

// anchorDate is 00:00 (in loc) on day min(anchor, last day) of the month; month may be out of
// 1..12 and is normalised.
func anchorDate(year int, month time.Month, anchor int, loc *time.Location) time.Time {
	if anchor < 1 {
		anchor = 1
	}
	first := time.Date(year, month, 1, 0, 0, 0, 0, loc)
	last := first.AddDate(0, 1, -1).Day()
	if anchor > last {
		anchor = last
	}
	return time.Date(first.Year(), first.Month(), anchor, 0, 0, 0, 0, loc)
}
