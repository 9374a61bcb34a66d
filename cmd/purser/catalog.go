package main

import (
	"fmt"
	"os"

	"github.com/purser-dev/purser/budget/pricing"
)

// loadCatalog returns the embedded catalog with the override file applied (if any).
func loadCatalog(path string) (*pricing.Catalog, error) {
	cat, err := pricing.Embedded()
	if err != nil {
		return nil, fmt.Errorf("embedded price catalog: %w", err)
	}
	if path == "" {
		return cat, nil
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("price overrides: %w", err)
	}
	defer fh.Close()
	out, err := pricing.Load(cat, fh)
	if err != nil {
		return nil, fmt.Errorf("price overrides %s: %w", path, err)
	}
	return out, nil
}
