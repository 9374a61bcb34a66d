package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/purser-dev/purser/admin"
)

// The console is a client of the admin API, in process: every read and change is an API
// request served as the signed-in principal (admin.WithPrincipal), so the console can never
// show or do more than the API allows that principal, and the route rules (and their test)
// are the one place access is decided.

// apiError is an error answer of the admin API.
type apiError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

func (e *apiError) Error() string { return e.Message }

// recorder is a minimal in-memory http.ResponseWriter for one API answer.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(s int) {
	if r.status == 0 {
		r.status = s
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// call sends one API request as p and decodes a 2xx answer into out (when not nil).
func (c *Console) call(ctx context.Context, p *admin.Principal, method, path string, q url.Values, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return err
		}
	}
	target := path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(admin.WithPrincipal(ctx, p), method, target, &body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &recorder{header: http.Header{}}
	c.api.ServeHTTP(rec, req)
	if rec.status/100 != 2 {
		var eb struct {
			Error apiError `json:"error"`
		}
		if json.Unmarshal(rec.body.Bytes(), &eb) != nil || eb.Error.Message == "" {
			return fmt.Errorf("%s %s: HTTP %d", method, path, rec.status)
		}
		eb.Error.Status = rec.status
		return &eb.Error
	}
	if out != nil && rec.body.Len() > 0 {
		if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// get is call for GET.
func (c *Console) get(ctx context.Context, p *admin.Principal, path string, q url.Values, out any) error {
	return c.call(ctx, p, "GET", path, q, nil, out)
}

// export streams an API export (CSV, JSON lines) to w as p: the API writes the answer itself,
// headers included, so the browser's download is byte for byte what the API answers.
func (c *Console) export(w http.ResponseWriter, r *http.Request, p *admin.Principal, path string, q url.Values) {
	req := r.Clone(admin.WithPrincipal(r.Context(), p))
	req.URL = &url.URL{Path: path, RawQuery: q.Encode()}
	req.RequestURI = ""
	req.Header = http.Header{}
	req.Body = http.NoBody
	c.api.ServeHTTP(w, req)
}

// splitList reads a comma or newline separated form field.
func splitList(s string) []string {
	out := []string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
