package bench

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
)

// ProfileShare is one category of a CPU profile's flat time.
type ProfileShare struct {
	Category string
	Seconds  float64
	Percent  float64
}

// ProfileFunc is one function's flat and cumulative time.
type ProfileFunc struct {
	Name      string
	Flat, Cum float64 // seconds
	FlatPct   float64
	CumPct    float64
}

// categories classify functions by import path, first match wins.
var categories = []struct{ prefix, name string }{
	{"github.com/purser-dev/purser/extauthz/request", "purser: request parsing"},
	{"github.com/purser-dev/purser/extauthz", "purser: ext_authz (decide, respond)"},
	{"github.com/purser-dev/purser/budget/pricing", "purser: pricing"},
	{"github.com/purser-dev/purser/budget/store", "purser: store (arrays to pgx)"},
	{"github.com/purser-dev/purser/budget", "purser: ledger (batcher, caches)"},
	{"github.com/purser-dev/purser/accesslog", "purser: access-log sink"},
	{"github.com/jackc/", "pgx (encode/decode, pool)"},
	{"google.golang.org/grpc", "grpc-go"},
	{"golang.org/x/net/http2", "HTTP/2 framing, HPACK"},
	{"google.golang.org/protobuf", "protobuf marshal/unmarshal"},
	{"go.opentelemetry.io", "metrics (OpenTelemetry)"},
	{"github.com/prometheus", "metrics (OpenTelemetry)"},
	{"github.com/hashicorp/golang-lru", "purser: ledger (batcher, caches)"},
	{"crypto/", "crypto (SHA-256 key and idempotency hashes)"},
	{"encoding/json", "encoding/json"},
	{"syscall.", "syscalls (network I/O)"},
	{"internal/poll", "syscalls (network I/O)"},
	{"internal/runtime/syscall", "syscalls (network I/O)"},
	{"net.", "syscalls (network I/O)"},
	{"runtime.newstack", "runtime: goroutine stack growth (copystack)"},
	{"runtime.copystack", "runtime: goroutine stack growth (copystack)"},
	{"runtime.adjust", "runtime: goroutine stack growth (copystack)"},
	{"runtime.pcvalue", "runtime: goroutine stack growth (copystack)"},
	{"runtime.step", "runtime: goroutine stack growth (copystack)"},
	{"runtime.findfunc", "runtime: goroutine stack growth (copystack)"},
	{"runtime.funcInfo", "runtime: goroutine stack growth (copystack)"},
	{"runtime.funcspdelta", "runtime: goroutine stack growth (copystack)"},
	{"runtime.(*stkframe)", "runtime: goroutine stack growth (copystack)"},
	{"runtime.(*unwinder)", "runtime: goroutine stack growth (copystack)"},
	{"runtime.readvarint", "runtime: goroutine stack growth (copystack)"},
	{"runtime.stackalloc", "runtime: goroutine stack growth (copystack)"},
	{"runtime.stackfree", "runtime: goroutine stack growth (copystack)"},
	{"runtime.(*moduledata).textAddr", "runtime: goroutine stack growth (copystack)"},
	{"runtime.mallocgc", "runtime: allocation"},
	{"runtime.nextFreeFast", "runtime: allocation"},
	{"runtime.(*mspan)", "runtime: allocation"},
	{"runtime.(*mcache)", "runtime: allocation"},
	{"runtime.heapSetType", "runtime: allocation"},
	{"runtime.memmove", "runtime: memmove/memclr"},
	{"runtime.growslice", "runtime: allocation"},
	{"runtime.memclr", "runtime: memmove/memclr"},
	{"runtime.mapaccess", "Go maps"},
	{"runtime.mapassign", "Go maps"},
	{"internal/runtime/maps", "Go maps"},
	{"aeshash", "Go maps"},
	{"runtime.selectgo", "runtime: channels, select"},
	{"runtime.chan", "runtime: channels, select"},
	{"runtime.send", "runtime: channels, select"},
	{"runtime.recv", "runtime: channels, select"},
	{"runtime.sellock", "runtime: channels, select"},
	{"runtime.selunlock", "runtime: channels, select"},
	{"runtime.lock", "runtime: channels, select"},
	{"runtime.unlock", "runtime: channels, select"},
	{"runtime.gc", "runtime: GC"},
	{"runtime.scan", "runtime: GC"},
	{"runtime.mark", "runtime: GC"},
	{"runtime.greyobject", "runtime: GC"},
	{"runtime.findObject", "runtime: GC"},
	{"runtime.wbBuf", "runtime: GC"},
	{"runtime.bulkBarrier", "runtime: GC"},
	{"runtime.", "runtime: scheduler, futex, netpoll, other"},
	{"context.", "context, time, sync"},
	{"time.", "context, time, sync"},
	{"sync.", "context, time, sync"},
	{"strings.", "strings, strconv, unicode"},
	{"strconv.", "strings, strconv, unicode"},
	{"unicode", "strings, strconv, unicode"},
	{"reflect.", "reflect"},
}

func categoryOf(fn string) string {
	for _, c := range categories {
		if strings.HasPrefix(fn, c.prefix) {
			return c.name
		}
	}
	return "other"
}

// SummarizeProfile runs `go tool pprof -top` on a CPU profile (narrowed by tagFocus, e.g.
// "side=server", when not empty) and groups flat time by category. It also returns the
// purser functions with the most cumulative time, and the CPU seconds the (narrowed)
// profile holds.
func SummarizeProfile(ctx context.Context, path, tagFocus string) ([]ProfileShare, []ProfileFunc, float64, error) {
	args := []string{"tool", "pprof", "-top", "-unit=ms", "-nodecount=100000"}
	if tagFocus != "" {
		args = append(args, "-tagfocus="+tagFocus)
	}
	flat, _, err := runTop(ctx, append(args, path))
	if err != nil {
		return nil, nil, 0, err
	}
	var total float64
	for _, f := range flat {
		total += f.Flat
	}
	byCat := map[string]float64{}
	for _, f := range flat {
		byCat[categoryOf(f.Name)] += f.Flat
	}
	var shares []ProfileShare
	for c, s := range byCat {
		shares = append(shares, ProfileShare{Category: c, Seconds: s, Percent: 100 * s / total})
	}
	sort.Slice(shares, func(i, j int) bool { return shares[i].Seconds > shares[j].Seconds })

	cum, _, err := runTop(ctx, append(append([]string{}, args...), "-cum", path))
	if err != nil {
		return nil, nil, 0, err
	}
	byName := map[string]ProfileFunc{}
	for _, f := range cum {
		byName[strings.TrimSuffix(f.Name, " (inline)")] = f
	}
	var top []ProfileFunc
	for _, name := range landmarks {
		if f, ok := byName[name]; ok {
			top = append(top, f)
		}
	}
	return shares, top, total, nil
}

// landmarks are the functions whose cumulative time says where a Check's CPU goes.
var landmarks = []string{
	"google.golang.org/grpc/internal/transport.(*http2Server).HandleStreams",
	"google.golang.org/grpc.(*Server).handleStream",
	"google.golang.org/grpc.(*Server).processUnaryRPC",
	"google.golang.org/grpc.recvAndDecompress",
	"google.golang.org/grpc/encoding/proto.(*codecV2).Unmarshal",
	"google.golang.org/grpc.(*Server).sendResponse",
	"google.golang.org/grpc/internal/transport.(*loopyWriter).run",
	"github.com/purser-dev/purser/extauthz.(*Server).Check",
	"github.com/purser-dev/purser/extauthz/request.Parse",
	"github.com/purser-dev/purser/extauthz.(*Server).decide",
	"github.com/purser-dev/purser/budget.(*Service).Authenticate",
	"github.com/purser-dev/purser/budget/store.(*Store).KeyByHash",
	"github.com/purser-dev/purser/budget.(*Batcher).Reserve",
	"github.com/purser-dev/purser/extauthz.(*Server).respond",
	"github.com/purser-dev/purser/extauthz.(*Server).observe",
	"github.com/purser-dev/purser/budget.(*Batcher).runBatch",
	"github.com/purser-dev/purser/budget.(*Service).Reserve",
	"github.com/purser-dev/purser/budget.(*Service).budgetsFor",
	"github.com/purser-dev/purser/budget/store.(*Store).LoadBudgets",
	"github.com/purser-dev/purser/budget/store.(*Store).Reserve",
	"runtime.newstack",
	"runtime.mallocgc",
	"runtime.gcAssistAlloc",
}

// runTop parses `go tool pprof -top -unit=ms` output: rows of
// "flat flat% sum% cum cum% name" and the total from "... of <total> total".
func runTop(ctx context.Context, args []string) ([]ProfileFunc, float64, error) {
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	if err != nil {
		return nil, 0, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	var total float64
	var fs []ProfileFunc
	rows := false
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, " total"); i > 0 && strings.Contains(line, "Showing nodes accounting for") {
			if j := strings.LastIndex(line[:i], " of "); j >= 0 {
				total = parseMS(strings.TrimSpace(line[j+4 : i]))
			}
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "flat") {
			rows = true
			continue
		}
		if !rows {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		fs = append(fs, ProfileFunc{
			Name: strings.Join(f[5:], " "), Flat: parseMS(f[0]), FlatPct: parsePct(f[1]),
			Cum: parseMS(f[3]), CumPct: parsePct(f[4]),
		})
	}
	if total == 0 {
		for _, f := range fs {
			total += f.Flat
		}
	}
	return fs, total, nil
}

func parseMS(s string) float64 {
	s = strings.TrimSuffix(s, "ms")
	v, _ := strconv.ParseFloat(s, 64)
	return v / 1000
}

func parsePct(s string) float64 {
	v, _ := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	return v
}
