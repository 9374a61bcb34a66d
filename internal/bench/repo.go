package bench

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
)

// RepoRoot returns the directory holding the module's go.mod: found from this source file
// when it is available (go run, go test), otherwise by walking up from the working directory.
func RepoRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok {
		dir := filepath.Dir(filepath.Dir(file))
		if isModuleRoot(dir) {
			return dir, nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isModuleRoot(dir) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("bench: cannot find the purser module root (go.mod)")
		}
		dir = parent
	}
}

func isModuleRoot(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, "cmd", "purser"))
	return err == nil
}
