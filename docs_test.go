package purser_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README and docs/ stand on their own: every relative link resolves to a file of this
// repository, and nothing points outside it (no ../shared, no design files kept elsewhere).
func TestDocs_RelativeLinksResolve(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs(".")
	require.NoError(t, err)
	files, err := filepath.Glob("docs/*.md")
	require.NoError(t, err)
	files = append([]string{"README.md"}, files...)
	link := regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	checked := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		text := string(data)
		require.NotContains(t, text, "../shared", "%s must not reference files outside the repository", f)
		require.NotContains(t, text, "steering repository", "%s must not reference files outside the repository", f)
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") || strings.HasPrefix(target, "#") {
				continue
			}
			target, _, _ = strings.Cut(target, "#")
			abs := filepath.Join(root, filepath.Dir(f), filepath.FromSlash(target))
			rel, err := filepath.Rel(root, abs)
			require.NoError(t, err)
			require.False(t, rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)),
				"%s links to %s, outside the repository", f, m[1])
			_, err = os.Stat(abs)
			require.NoError(t, err, "%s links to %s, which is not a file of the repository", f, m[1])
			checked++
		}
	}
	require.Greater(t, checked, 10, "the link pattern finds the README's links")
}

// make help lists every target of the Makefile: each has a "## " description its pattern reads.
func TestMakefile_HelpListsEveryTarget(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("Makefile")
	require.NoError(t, err)
	target := regexp.MustCompile(`^([A-Za-z0-9_.-]+):([^=]|$)`)
	help := regexp.MustCompile(`^[a-z0-9-]+:.*## `) // the pattern of the help target's grep
	var targets []string
	for _, line := range strings.Split(string(data), "\n") {
		m := target.FindStringSubmatch(line)
		if m == nil || m[1] == ".PHONY" {
			continue
		}
		targets = append(targets, m[1])
		require.True(t, help.MatchString(line), "make help lists target %q: give it a '## description' (line %q)", m[1], line)
	}
	require.Contains(t, targets, "e2e", "the Makefile's targets are found, e2e among them")
	require.Contains(t, string(data), `grep -hE '^[a-z0-9-]+:.*## '`, "the help target uses the pattern this test checks")
}
