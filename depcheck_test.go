// Package purser_test holds repository-wide checks.
package purser_test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/purser-dev/purser"

// TestImportDirection enforces docs/architecture.md: imports flow cmd → extauthz/accesslog/admin
// → budget → budget/store, and the Envoy-facing packages never touch the database directly.
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	type rule struct {
		pkgPrefix string
		forbidden []string
		why       string
	}
	rules := []rule{
		{module + "/extauthz", []string{"github.com/jackc/pgx", module + "/budget/store", module + "/cmd", module + "/e2e"}, "the Check path talks to the ledger through budget, never to Postgres"},
		{module + "/accesslog", []string{"github.com/jackc/pgx", module + "/budget/store", module + "/cmd", module + "/e2e"}, "the sink settles through budget, never through Postgres"},
		{module + "/admin", []string{"github.com/jackc/pgx", module + "/budget/store", module + "/cmd", module + "/e2e"}, "the admin API works through budget"},
		{module + "/alerts", []string{"github.com/jackc/pgx", module + "/budget/store", module + "/cmd", module + "/e2e"}, "alerts work through budget"},
		{module + "/console", []string{"github.com/jackc/pgx", module + "/budget/store", module + "/cmd", module + "/e2e", module + "/extauthz", module + "/accesslog"}, "the console is a client of the admin API"},
		{module + "/budget", []string{"google.golang.org/grpc", "github.com/envoyproxy", module + "/extauthz", module + "/accesslog", module + "/admin", module + "/alerts", module + "/cmd", module + "/e2e"}, "the domain knows nothing of Envoy or gRPC"},
		{module + "/budget/store", []string{module + "/budget\x00", module + "/extauthz", module + "/accesslog", module + "/admin"}, "the store imports nothing of purser's"},
		{module + "/budget/pricing", []string{module + "/"}, "the price catalog is self-contained"},
		{module + "/migrations", []string{module + "/"}, "migrations are self-contained"},
		{module + "/grpccodec", []string{module + "/"}, "the codec is self-contained"},
		{module + "/proof", []string{module + "/", "github.com/jackc/pgx", "google.golang.org/grpc", "github.com/envoyproxy"}, "proofs are pure: keys come from the caller"},
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg, imports := fields[0], fields[1:]
		for _, r := range rules {
			if pkg != r.pkgPrefix && !strings.HasPrefix(pkg, r.pkgPrefix+"/") {
				continue
			}
			// budget/... rules do not apply to budget/store/pgtest (a test helper) or to
			// sub-packages that have their own rule.
			if r.pkgPrefix == module+"/budget" && (strings.HasPrefix(pkg, module+"/budget/store") || strings.HasPrefix(pkg, module+"/budget/pricing")) {
				continue
			}
			if r.pkgPrefix == module+"/budget/store" && strings.HasPrefix(pkg, module+"/budget/store/pgtest") {
				continue
			}
			checked++
			for _, imp := range imports {
				for _, f := range r.forbidden {
					exact := strings.HasSuffix(f, "\x00")
					f = strings.TrimSuffix(f, "\x00")
					if (exact && imp == f) || (!exact && (imp == f || strings.HasPrefix(imp, strings.TrimSuffix(f, "/")+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(imp, f)))) {
						t.Errorf("%s imports %s: %s", pkg, imp, r.why)
					}
				}
			}
		}
	}
	if checked < 3 {
		t.Fatalf("only %d packages checked: the rules no longer match the layout", checked)
	}
}
