package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"unicode"
)

// FuzzStrictJSON: strictJSON never panics; what it rejects is a 400 naming a field; a valid
// document it accepts decodes to strings free of control characters.
func FuzzStrictJSON(f *testing.F) {
	for _, s := range []string{
		`{"name":"a","subjects":["team:ml"]}`, `{"a":1,"a":2}`, `{"a":{"b":[1,{"c":"\u0000"}]}}`,
		`{"a\u0001":1}`, `[[[[[]]]]]`, `{"a":"x\ud800"}`, `{"a":`, `"\u007f"`, `{"":1,"":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		err := strictJSON(data)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != http.StatusBadRequest {
				t.Fatalf("rejection is not a 400: %v", err)
			}
			return
		}
		var v any
		if json.Unmarshal(data, &v) != nil {
			return
		}
		var check func(any)
		check = func(v any) {
			switch x := v.(type) {
			case string:
				for _, r := range x {
					if unicode.IsControl(r) {
						t.Fatalf("accepted a control character in %q", data)
					}
				}
			case []any:
				for _, e := range x {
					check(e)
				}
			case map[string]any:
				for k, e := range x {
					check(k)
					check(e)
				}
			}
		}
		check(v)
	})
}
