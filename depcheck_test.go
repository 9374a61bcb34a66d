// Package purser_test holds repository-wide checks.
package purser_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/purser-dev/purser"

// allowedImports lists, for every package of the module (by path below the module, "" for
// the root), the module's packages its non-test code may import: imports flow cmd →
// extauthz/accesslog/admin/alerts/console → budget → budget/store (docs/architecture.md). A
// package missing here fails the test: a new package states what it may depend on.
var allowedImports = map[string][]string{
	"":                 {},
	"cmd/purser":       {"accesslog", "admin", "alerts", "budget", "budget/pricing", "budget/store", "console", "extauthz", "extauthz/request", "grpccodec", "migrations", "proof"},
	"cmd/purser-bench": {"internal/bench", "budget", "budget/pricing", "budget/store"},
	"cmd/purser-demo":  {"internal/bench", "internal/envoysim", "internal/fakellm"},
	"cmd/fakellm":      {"internal/fakellm"},

	// The Envoy-facing adapters reach the ledger through budget, never through the store.
	"extauthz":         {"budget", "budget/pricing", "extauthz/request", "proof"},
	"extauthz/request": {"budget", "budget/pricing"},
	"accesslog":        {"budget", "budget/pricing", "internal/pbwire", "proof"},
	"admin":            {"budget", "budget/pricing"},
	"alerts":           {"budget"},
	"console":          {"admin", "budget"}, // a client of the admin API

	"budget":              {"budget/pricing", "budget/store", "proof"},
	"budget/pricing":      {}, // the price catalog is self-contained
	"budget/store":        {}, // the store imports nothing of purser's
	"budget/store/pgtest": {"migrations"},

	"grpccodec":          {"internal/pbwire"},
	"internal/pbwire":    {},
	"internal/pgcluster": {},
	"internal/testkit":   {},
	"internal/testdb":    {"budget/store/pgtest"}, // make test-db: creates the test database
	"migrations":         {},
	"proof":              {}, // proofs are pure: keys come from the caller

	"internal/bench":    {"accesslog", "budget", "budget/pricing", "budget/store", "extauthz", "extauthz/request", "grpccodec", "internal/pbwire", "migrations", "proof"},
	"deploy":            {},
	"e2e":               {},
	"internal/envoysim": {"envoy"},
	"internal/fakellm":  {},
	"envoy":             {},
}

// forbiddenExternal lists third-party import prefixes a package (and its sub-packages) must
// not use, with the reason.
var forbiddenExternal = []struct {
	pkg       string
	forbidden []string
	why       string
}{
	{"extauthz", []string{"github.com/jackc/pgx"}, "the Check path talks to the ledger through budget, never to Postgres"},
	{"accesslog", []string{"github.com/jackc/pgx"}, "the sink settles through budget, never through Postgres"},
	{"admin", []string{"github.com/jackc/pgx"}, "the admin API works through budget"},
	{"alerts", []string{"github.com/jackc/pgx"}, "alerts work through budget"},
	{"console", []string{"github.com/jackc/pgx"}, "the console is a client of the admin API"},
	{"budget", []string{"google.golang.org/grpc", "github.com/envoyproxy"}, "the domain knows nothing of Envoy or gRPC"},
	{"proof", []string{"github.com/jackc/pgx", "google.golang.org/grpc", "github.com/envoyproxy"}, "proofs are pure"},
}

// layer ranks the module's packages: an allowed import never points to a higher layer.
func layer(pkg string) int {
	switch {
	case pkg == "", under(pkg, "cmd"), under(pkg, "e2e"), under(pkg, "internal/bench"), under(pkg, "internal/envoysim"), under(pkg, "internal/fakellm"), pkg == "internal/testdb":
		return 4 // binaries (internal/testdb is make test-db's), and the harnesses that drive the whole server
	case under(pkg, "extauthz"), under(pkg, "accesslog"), under(pkg, "admin"), under(pkg, "alerts"), under(pkg, "console"):
		return 3
	case pkg == "budget", under(pkg, "budget/store/pgtest"):
		return 2
	}
	return 1 // budget/pricing, budget/store, grpccodec, proof, migrations, internal, envoy, deploy
}

// under reports whether pkg is dir or below it.
func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// TestImportDirection enforces docs/architecture.md on every package's non-test imports.
func TestImportDirection(t *testing.T) {
	for pkg, allowed := range allowedImports {
		for _, a := range allowed {
			if layer(a) > layer(pkg) {
				t.Errorf("allowedImports[%q] lists %s, a higher layer (%d > %d): imports flow cmd → adapters → budget → store", pkg, a, layer(a), layer(pkg))
			}
			if _, ok := allowedImports[a]; !ok {
				t.Errorf("allowedImports[%q] lists %s, which is not a package of the module", pkg, a)
			}
		}
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg := strings.TrimPrefix(strings.TrimPrefix(fields[0], module), "/")
		allowed, ok := allowedImports[pkg]
		if !ok {
			t.Errorf("package %q has no entry in allowedImports: list the module packages it may import", pkg)
			continue
		}
		checked++
		for _, imp := range fields[1:] {
			if rel, internal := strings.CutPrefix(imp, module+"/"); internal {
				if !slices.Contains(allowed, rel) {
					t.Errorf("%s imports %s: not in its allowedImports %q", fields[0], imp, allowed)
				}
				continue
			}
			for _, r := range forbiddenExternal {
				if !under(pkg, r.pkg) {
					continue
				}
				for _, f := range r.forbidden {
					if under(imp, f) {
						t.Errorf("%s imports %s: %s", fields[0], imp, r.why)
					}
				}
			}
		}
	}
	if checked < len(allowedImports)/2 {
		t.Fatalf("only %d packages checked against %d allow-lists: the module layout changed", checked, len(allowedImports))
	}
}
