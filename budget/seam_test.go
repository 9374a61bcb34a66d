package budget_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// budget's exported API speaks only budget's types: admin/ and cmd/ never see a store row.
// The one store type allowed is *store.Store, which New takes (cmd wires the pools).
func TestSeam_NoStoreTypesInBudgetAPI(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var leaks []string
	storeRef := func(n ast.Node) (found string) {
		ast.Inspect(n, func(n ast.Node) bool {
			if found != "" {
				return false
			}
			if star, ok := n.(*ast.StarExpr); ok {
				if sel, ok := star.X.(*ast.SelectorExpr); ok {
					if id, ok := sel.X.(*ast.Ident); ok && id.Name == "store" && sel.Sel.Name == "Store" {
						return false // *store.Store: wiring
					}
				}
			}
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "store" {
					found = "store." + sel.Sel.Name
				}
			}
			return true
		})
		return found
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		require.NoError(t, err)
		for _, d := range file.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if !d.Name.IsExported() {
					continue
				}
				if d.Recv != nil {
					recv := d.Recv.List[0].Type
					if s, ok := recv.(*ast.StarExpr); ok {
						recv = s.X
					}
					if id, ok := recv.(*ast.Ident); ok && !id.IsExported() {
						continue
					}
				}
				if ref := storeRef(d.Type); ref != "" {
					leaks = append(leaks, fset.Position(d.Pos()).String()+": func "+d.Name.Name+" uses "+ref)
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch s := spec.(type) {
					case *ast.TypeSpec:
						if !s.Name.IsExported() {
							continue
						}
						if st, ok := s.Type.(*ast.StructType); ok {
							for _, fld := range st.Fields.List {
								exported := len(fld.Names) == 0 // embedded
								for _, n := range fld.Names {
									exported = exported || n.IsExported()
								}
								if ref := storeRef(fld.Type); exported && ref != "" {
									leaks = append(leaks, fset.Position(fld.Pos()).String()+": type "+s.Name.Name+" has a field of "+ref)
								}
							}
						} else if ref := storeRef(s.Type); ref != "" {
							leaks = append(leaks, fset.Position(s.Pos()).String()+": type "+s.Name.Name+" is "+ref)
						}
					case *ast.ValueSpec:
						for i, n := range s.Names {
							if n.IsExported() && i < len(s.Values) {
								if ref := storeRef(s.Values[i]); ref != "" {
									leaks = append(leaks, fset.Position(n.Pos()).String()+": "+n.Name+" is "+ref)
								}
							}
						}
					}
				}
			}
		}
	}
	require.Empty(t, leaks, "budget's exported API converts store rows at the seam (budget/seam.go) instead of exposing them")
}
