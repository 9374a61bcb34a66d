package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the kernel's USER_HZ: /proc times are in these units (100 on every Linux
// architecture Go runs on).
const clockTick = 10 * time.Millisecond

// ProcCPU returns the user+system CPU time a process has used (Linux /proc).
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: parse after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state(3) ppid(4) ... utime(14) stime(15): indexes 11 and 12 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// ProcsCPU sums ProcCPU over pids, ignoring processes that are gone.
func ProcsCPU(pids []int) time.Duration {
	var total time.Duration
	for _, p := range pids {
		if d, err := ProcCPU(p); err == nil {
			total += d
		}
	}
	return total
}

// MachineCPU returns the busy and total CPU time of the whole machine (all cores) from
// /proc/stat.
func MachineCPU() (busy, total time.Duration, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, fmt.Errorf("/proc/stat: empty")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line")
	}
	var idle, sum int64
	for i, s := range fields[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			continue
		}
		if i >= 8 { // guest and guest_nice are already counted in user and nice
			break
		}
		sum += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return time.Duration(sum-idle) * clockTick, time.Duration(sum) * clockTick, nil
}

// CPUSnapshot is a point-in-time reading of the CPU used by the processes of interest.
type CPUSnapshot struct {
	At      time.Time
	Server  time.Duration // the server process under test (0 when it is in-process)
	DB      time.Duration // the database backends serving the run
	Self    time.Duration // this process (load generator, in-process servers)
	Machine time.Duration // every process on the machine
}

// TakeCPU reads the counters: serverPID may be 0 (in-process server), dbPIDs lists the
// backends to account.
func TakeCPU(serverPID int, dbPIDs []int) CPUSnapshot {
	s := CPUSnapshot{At: time.Now(), DB: ProcsCPU(dbPIDs)}
	if serverPID > 0 {
		s.Server, _ = ProcCPU(serverPID)
	}
	s.Self, _ = ProcCPU(os.Getpid())
	s.Machine, _, _ = MachineCPU()
	return s
}

// CPUUse is the CPU used between two snapshots.
type CPUUse struct {
	Wall                      time.Duration
	Server, DB, Self, Machine time.Duration
}

// Sub returns the CPU used from a to b.
func (b CPUSnapshot) Sub(a CPUSnapshot) CPUUse {
	return CPUUse{Wall: b.At.Sub(a.At), Server: b.Server - a.Server, DB: b.DB - a.DB, Self: b.Self - a.Self, Machine: b.Machine - a.Machine}
}

// Other is the CPU used by everything else on the machine, in cores (other engineers'
// work, Postgres background processes, the kernel).
func (u CPUUse) Other() float64 {
	if u.Wall <= 0 {
		return 0
	}
	// Counters tick every 10ms per process: clamp the rounding noise at zero.
	return max(0, (u.Machine-u.Server-u.DB-u.Self).Seconds()/u.Wall.Seconds())
}

// Machine describes where the run happened.
type Machine struct {
	CPU        string
	Cores      int
	Kernel     string
	GoVersion  string
	Postgres   string
	Settings   map[string]string // synchronous_commit, fsync, wal_sync_method, shared_buffers...
	Fdatasync  time.Duration     // median 8 KiB write+fdatasync, 0 if not measured
	FsyncWhere string
	LoadAvg    string
}

// DescribeMachine fills the parts of Machine that need no database.
func DescribeMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), Settings: map[string]string{}}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	m.LoadAvg = LoadAvg()
	return m
}

// LoadAvg returns the 1/5/15-minute load averages.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// MeasureFdatasync times 8 KiB write+fdatasync cycles on a file in dir for about d and
// returns the median: Postgres pays one such flush per commit with synchronous_commit=on.
func MeasureFdatasync(dir string, d time.Duration) (time.Duration, error) {
	f, err := os.CreateTemp(dir, ".purser-bench-fsync-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 8192)
	var lat []time.Duration
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) || len(lat) < 10 {
		t0 := time.Now()
		if _, err := f.WriteAt(buf, 0); err != nil {
			return 0, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, err
		}
		lat = append(lat, time.Since(t0))
		if len(lat) > 100000 {
			break
		}
	}
	return median(lat), nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// SameFilesystem reports whether a and b are on the same device.
func SameFilesystem(a, b string) bool {
	var sa, sb syscall.Stat_t
	if syscall.Stat(a, &sa) != nil || syscall.Stat(filepath.Clean(b), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev
}
