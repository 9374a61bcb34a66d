package budget

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	require.NoError(t, err)
	return loc
}

func TestWindowSpec_At(t *testing.T) {
	t.Parallel()
	ny := mustLoc(t, "America/New_York")
	berlin := mustLoc(t, "Europe/Berlin")
	kolkata := mustLoc(t, "Asia/Kolkata")
	utc := time.UTC
	at := func(loc *time.Location, y int, m time.Month, d, h, min int) time.Time {
		return time.Date(y, m, d, h, min, 0, 0, loc)
	}
	cases := map[string]struct {
		spec       WindowSpec
		t          time.Time
		start, end time.Time
	}{
		"DayUTC": {WindowSpec{Kind: Day}, at(utc, 2026, 3, 5, 13, 7), at(utc, 2026, 3, 5, 0, 0), at(utc, 2026, 3, 6, 0, 0)},
		// 8 March 2026 is 23 hours long in New York (DST starts at 02:00).
		"DayAcrossSpringForward": {WindowSpec{Kind: Day, Location: ny}, at(ny, 2026, 3, 8, 12, 0), at(ny, 2026, 3, 8, 0, 0), at(ny, 2026, 3, 9, 0, 0)},
		// Month windows in New York: March begins in EST (-05:00) and ends in EDT (-04:00).
		"MonthAcrossDST":    {WindowSpec{Kind: Month, Location: ny}, at(ny, 2026, 3, 31, 23, 59), at(ny, 2026, 3, 1, 0, 0), at(ny, 2026, 4, 1, 0, 0)},
		"MonthFirstInstant": {WindowSpec{Kind: Month, Location: ny}, at(ny, 2026, 4, 1, 0, 0), at(ny, 2026, 4, 1, 0, 0), at(ny, 2026, 5, 1, 0, 0)},
		// 04:30 UTC on 1 April is still 31 March in New York.
		"MonthUTCInstantStillPreviousLocalMonth": {WindowSpec{Kind: Month, Location: ny}, at(utc, 2026, 4, 1, 3, 30), at(ny, 2026, 3, 1, 0, 0), at(ny, 2026, 4, 1, 0, 0)},
		// Berlin falls back on 25 October 2026.
		"DayAcrossFallBack": {WindowSpec{Kind: Day, Location: berlin}, at(berlin, 2026, 10, 25, 23, 0), at(berlin, 2026, 10, 25, 0, 0), at(berlin, 2026, 10, 26, 0, 0)},
		// ISO weeks start on Monday; 1 January 2026 is a Thursday of the week starting 29 Dec 2025.
		"ISOWeekAcrossYear":   {WindowSpec{Kind: Week}, at(utc, 2026, 1, 1, 10, 0), at(utc, 2025, 12, 29, 0, 0), at(utc, 2026, 1, 5, 0, 0)},
		"ISOWeekSunday":       {WindowSpec{Kind: Week}, at(utc, 2026, 1, 4, 23, 59), at(utc, 2025, 12, 29, 0, 0), at(utc, 2026, 1, 5, 0, 0)},
		"ISOWeekMondayStarts": {WindowSpec{Kind: Week}, at(utc, 2026, 1, 5, 0, 0), at(utc, 2026, 1, 5, 0, 0), at(utc, 2026, 1, 12, 0, 0)},
		// Anchor 31: the billing month starts on the 31st or on the last day of shorter months.
		"Anchor31February":     {WindowSpec{Kind: Month, AnchorDay: 31}, at(utc, 2026, 3, 15, 0, 0), at(utc, 2026, 2, 28, 0, 0), at(utc, 2026, 3, 31, 0, 0)},
		"Anchor31OnThe31st":    {WindowSpec{Kind: Month, AnchorDay: 31}, at(utc, 2026, 3, 31, 0, 0), at(utc, 2026, 3, 31, 0, 0), at(utc, 2026, 4, 30, 0, 0)},
		"Anchor31April":        {WindowSpec{Kind: Month, AnchorDay: 31}, at(utc, 2026, 5, 2, 0, 0), at(utc, 2026, 4, 30, 0, 0), at(utc, 2026, 5, 31, 0, 0)},
		"Anchor31LeapFebruary": {WindowSpec{Kind: Month, AnchorDay: 31}, at(utc, 2028, 3, 1, 0, 0), at(utc, 2028, 2, 29, 0, 0), at(utc, 2028, 3, 31, 0, 0)},
		"Anchor15BeforeAnchor": {WindowSpec{Kind: Month, AnchorDay: 15}, at(utc, 2026, 1, 14, 23, 0), at(utc, 2025, 12, 15, 0, 0), at(utc, 2026, 1, 15, 0, 0)},
		"Quarter":              {WindowSpec{Kind: Quarter}, at(utc, 2026, 5, 20, 0, 0), at(utc, 2026, 4, 1, 0, 0), at(utc, 2026, 7, 1, 0, 0)},
		"QuarterAnchor":        {WindowSpec{Kind: Quarter, AnchorDay: 10}, at(utc, 2026, 4, 5, 0, 0), at(utc, 2026, 1, 10, 0, 0), at(utc, 2026, 4, 10, 0, 0)},
		"Year":                 {WindowSpec{Kind: Year, Location: berlin}, at(berlin, 2026, 12, 31, 23, 59), at(berlin, 2026, 1, 1, 0, 0), at(berlin, 2027, 1, 1, 0, 0)},
		"Lifetime":             {WindowSpec{Kind: Lifetime}, at(utc, 2026, 5, 20, 0, 0), lifetimeStart, lifetimeEnd},
		"Minute":               {WindowSpec{Kind: Minute}, time.Date(2026, 5, 20, 10, 7, 59, 999, utc), at(utc, 2026, 5, 20, 10, 7), at(utc, 2026, 5, 20, 10, 8)},
		"MinuteFirstInstant":   {WindowSpec{Kind: Minute}, at(utc, 2026, 5, 20, 10, 8), at(utc, 2026, 5, 20, 10, 8), at(utc, 2026, 5, 20, 10, 9)},
		"Hour":                 {WindowSpec{Kind: Hour, Location: berlin}, at(berlin, 2026, 5, 20, 10, 59), at(berlin, 2026, 5, 20, 10, 0), at(berlin, 2026, 5, 20, 11, 0)},
		// Kolkata is +05:30: its clock hours start at half past the UTC hour.
		"HourHalfHourZone": {WindowSpec{Kind: Hour, Location: kolkata}, at(utc, 2026, 5, 20, 10, 20), at(utc, 2026, 5, 20, 9, 30), at(utc, 2026, 5, 20, 10, 30)},
		// New York falls back on 1 November 2026: 01:00-02:00 happens twice. The second 01:40
		// (EST, 06:40 UTC) is in the second 01:00 hour, not in the first (05:00 UTC).
		"HourRepeatedAtFallBack": {WindowSpec{Kind: Hour, Location: ny}, at(utc, 2026, 11, 1, 6, 40), at(utc, 2026, 11, 1, 6, 0), at(utc, 2026, 11, 1, 7, 0)},
		"HourFirstAtFallBack":    {WindowSpec{Kind: Hour, Location: ny}, at(utc, 2026, 11, 1, 5, 40), at(utc, 2026, 11, 1, 5, 0), at(utc, 2026, 11, 1, 6, 0)},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			require.NoError(t, c.spec.Validate())
			w := c.spec.At(c.t, time.Time{})
			require.True(t, w.Start.Equal(c.start), "start: got %s want %s", w.Start, c.start)
			require.True(t, w.End.Equal(c.end), "end: got %s want %s", w.End, c.end)
			require.False(t, c.t.Before(w.Start))
			require.True(t, c.t.Before(w.End))
		})
	}
}

func TestWindowSpec_MonthLengthAcrossDST(t *testing.T) {
	t.Parallel()
	ny := mustLoc(t, "America/New_York")
	w := WindowSpec{Kind: Month, Location: ny}.At(time.Date(2026, 3, 15, 0, 0, 0, 0, ny), time.Time{})
	// 31 days minus the hour lost at the spring-forward change.
	require.Equal(t, 31*24*time.Hour-time.Hour, w.End.Sub(w.Start))
}

func TestWindowSpec_Rolling(t *testing.T) {
	t.Parallel()
	spec := WindowSpec{Kind: Rolling, Rolling: 72 * time.Hour}
	require.NoError(t, spec.Validate())
	require.Equal(t, 3*time.Hour, spec.BucketSize())
	t0 := time.Date(2026, 6, 1, 10, 30, 0, 0, time.UTC)
	w := spec.At(t0, time.Time{})
	require.Equal(t, time.Date(2026, 6, 1, 9, 0, 0, 0, time.UTC), w.Start)
	require.Equal(t, time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC), w.End)
	// The oldest counted bucket starts 24 buckets before the current one.
	require.Equal(t, w.Start.Add(-72*time.Hour), w.RollFrom)
	require.True(t, w.RollFrom.After(t0.Add(-75*time.Hour)), "never more than one extra bucket")
	// The counted span always covers at least the last 72h.
	require.False(t, w.RollFrom.After(t0.Add(-72*time.Hour)))

	odd := WindowSpec{Kind: Rolling, Rolling: 25 * time.Minute}
	require.Equal(t, 63*time.Second, odd.BucketSize()) // ceil(1500s/24) = 62.5s → 63s
	ow := odd.At(t0, time.Time{})
	require.False(t, ow.RollFrom.After(t0.Add(-25*time.Minute)))
}

func TestWindowSpec_Reset(t *testing.T) {
	t.Parallel()
	spec := WindowSpec{Kind: Month}
	reset := time.Date(2026, 6, 10, 12, 0, 0, 0, time.UTC)
	before := spec.At(time.Date(2026, 6, 10, 11, 0, 0, 0, time.UTC), reset)
	require.Equal(t, time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), before.Start, "a reset in the future does not apply yet")
	after := spec.At(time.Date(2026, 6, 20, 0, 0, 0, 0, time.UTC), reset)
	require.Equal(t, reset, after.Start)
	require.Equal(t, time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC), after.End)
	next := spec.At(time.Date(2026, 7, 2, 0, 0, 0, 0, time.UTC), reset)
	require.Equal(t, time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC), next.Start, "the next window is untouched by an old reset")

	roll := WindowSpec{Kind: Rolling, Rolling: 24 * time.Hour}
	rw := roll.At(time.Date(2026, 6, 10, 12, 30, 0, 0, time.UTC), reset)
	require.Equal(t, reset, rw.RollFrom)
	require.Equal(t, reset, rw.Start)
}

func TestWindowSpec_Validate(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		spec WindowSpec
		msg  string
	}{
		"UnknownKind":     {WindowSpec{Kind: "fortnight"}, `unknown window "fortnight"`},
		"RollingTooShort": {WindowSpec{Kind: Rolling, Rolling: time.Second}, "rolling window must be between 1m0s and 9600h0m0s, got 1s"},
		"RollingFraction": {WindowSpec{Kind: Rolling, Rolling: 90*time.Second + time.Millisecond}, "whole number of seconds"},
		"AnchorOnDay":     {WindowSpec{Kind: Day, AnchorDay: 3}, "anchor day applies to month, quarter and year windows"},
		"AnchorTooBig":    {WindowSpec{Kind: Month, AnchorDay: 32}, "anchor day must be 1-31, got 32"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := c.spec.Validate()
			require.Error(t, err)
			require.Contains(t, err.Error(), c.msg)
		})
	}
}
