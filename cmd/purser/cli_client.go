package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The admin CLI commands (keys, budgets, templates, status, spend, audit, apply) talk to a
// running purser's admin API; they never open the database.

const defaultAdminAddr = "http://" + defaultHTTPAddr

// apiClient calls the admin API.
type apiClient struct {
	base  *url.URL
	token string
	http  *http.Client
}

// cliFlags are the flags every admin CLI command has.
type cliFlags struct {
	*flags
	addr, token, output *string
	// exports are the -o values beyond table and json that a command streams from the API.
	exports []string
}

// tokenEnv holds the admin token when -token is not given (a Secret flag: never printed as
// the default in flag usage).
const tokenEnv = "PURSER_ADMIN_TOKEN"

func newCLIFlags(name string, e env) *cliFlags {
	f := newFlags(name, e)
	return &cliFlags{
		flags:  f,
		addr:   f.String("addr", "PURSER_ADDR", defaultAdminAddr, "purser's HTTP address (the admin API)"),
		token:  f.Secret("token", tokenEnv, "", "admin bearer token"),
		output: f.FlagSet.String("o", "table", "output: table or json"),
	}
}

// parse parses flags placed anywhere among the arguments and returns the positional ones,
// checking their count is between lo and hi (hi < 0: no upper bound). synopsis is the usage
// line after the command's name: the positional arguments first ("KEY_ID", "SUBJECT...").
func (f *cliFlags) parse(args []string, lo, hi int, synopsis string) ([]string, error) {
	f.synopsis = synopsis
	var pos []string
	for {
		if err := f.parseFlags(args); err != nil {
			return nil, err
		}
		if f.NArg() == 0 {
			break
		}
		pos = append(pos, f.Arg(0))
		args = f.Args()[1:]
	}
	if err := f.finish(); err != nil {
		return nil, err
	}
	if len(pos) < lo || (hi >= 0 && len(pos) > hi) {
		return nil, f.misuse(argCount(lo, hi, len(pos)))
	}
	if *f.output != "table" && *f.output != "json" && !slices.Contains(f.exports, *f.output) {
		return nil, fmt.Errorf("-o %q: want %s", *f.output, strings.Join(append([]string{"table", "json"}, f.exports...), ", "))
	}
	return pos, nil
}

// argCount says how many positional arguments a command takes.
func argCount(lo, hi, got int) string {
	plural := func(n int) string {
		if n == 1 {
			return "1 argument"
		}
		return strconv.Itoa(n) + " arguments"
	}
	switch {
	case hi == 0:
		return fmt.Sprintf("takes no arguments, got %d", got)
	case lo == hi:
		return fmt.Sprintf("takes %s, got %d", plural(lo), got)
	case hi < 0:
		return fmt.Sprintf("takes at least %s, got %d", plural(lo), got)
	}
	return fmt.Sprintf("takes %d to %d arguments, got %d", lo, hi, got)
}

func (f *cliFlags) json() bool { return *f.output == "json" }

func (f *cliFlags) client() (*apiClient, error) {
	u, err := url.Parse(*f.addr)
	if err == nil && u.Scheme == "" { // host:port
		u, err = url.Parse("http://" + *f.addr)
	}
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("-addr %q: want http://host:port", *f.addr)
	}
	token := *f.token
	if token == "" {
		return nil, errors.New("no admin token: set " + tokenEnv + " or pass -token")
	}
	return &apiClient{base: u, token: token, http: &http.Client{Timeout: 60 * time.Second}}, nil
}

// call sends one request and decodes the answer into out (when not nil). With -o json it
// prints the answer as well and reports printed: the command has nothing more to write.
func (f *cliFlags) call(ctx context.Context, e env, method, path string, query url.Values, in, out any) (printed bool, err error) {
	c, err := f.client()
	if err != nil {
		return false, err
	}
	raw, err := c.do(ctx, method, path, query, in, out)
	if err != nil {
		return false, err
	}
	if f.json() {
		return true, printJSON(e.stdout, raw)
	}
	return false, nil
}

// list fetches every page of a paged list (GET path, field naming the array in each page)
// and decodes the items into out, a pointer to a slice. With -o json it prints them as one
// object, {field: [...]}, and reports printed.
func (f *cliFlags) list(ctx context.Context, e env, path string, query url.Values, field string, out any) (printed bool, err error) {
	c, err := f.client()
	if err != nil {
		return false, err
	}
	items, err := c.listAll(ctx, path, query, field)
	if err != nil {
		return false, err
	}
	if err := decodeItems(path, field, items, out); err != nil {
		return false, err
	}
	if f.json() {
		raw, err := json.Marshal(map[string]json.RawMessage{field: items})
		if err != nil {
			return false, err
		}
		return true, printJSON(e.stdout, raw)
	}
	return false, nil
}

// listInto fetches every page of a paged list and decodes the items into out.
func (c *apiClient) listInto(ctx context.Context, path string, query url.Values, field string, out any) error {
	items, err := c.listAll(ctx, path, query, field)
	if err != nil {
		return err
	}
	return decodeItems(path, field, items, out)
}

func decodeItems(path, field string, items json.RawMessage, out any) error {
	if err := json.Unmarshal(items, out); err != nil {
		return fmt.Errorf("GET %s: %s: %w", path, field, err)
	}
	return nil
}

// listPageSize is the page size the CLI asks for: the admin API's largest.
const listPageSize = 1000

// listAll follows a paged list from its first page to its last (next_after null) and returns
// the items of every page as one JSON array.
func (c *apiClient) listAll(ctx context.Context, path string, query url.Values, field string) (json.RawMessage, error) {
	q := maps.Clone(query) // Set replaces a key's slice: the caller's values are not touched
	if q == nil {
		q = url.Values{}
	}
	q.Set("limit", strconv.Itoa(listPageSize))
	var items []json.RawMessage
	for {
		var page map[string]json.RawMessage
		if _, err := c.do(ctx, "GET", path, q, nil, &page); err != nil {
			return nil, err
		}
		var these []json.RawMessage
		if err := json.Unmarshal(page[field], &these); err != nil || these == nil {
			return nil, fmt.Errorf("GET %s: the answer has no %q array", path, field)
		}
		items = append(items, these...)
		next := page["next_after"]
		if len(next) == 0 || string(next) == "null" {
			break
		}
		after := string(next) // a budget id
		var s string
		if json.Unmarshal(next, &s) == nil { // a key cursor
			after = s
		}
		if after == q.Get("after") || len(these) == 0 {
			return nil, fmt.Errorf("GET %s: next_after %s does not advance the list", path, next)
		}
		q.Set("after", after)
	}
	if items == nil {
		items = []json.RawMessage{}
	}
	return json.Marshal(items)
}

// stream copies a GET answer (an export) to w as it arrives.
func (c *apiClient) stream(ctx context.Context, path string, query url.Values, w io.Writer) error {
	u := c.base.JoinPath(path)
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	hc := *c.http
	hc.Timeout = 0 // an export takes as long as it takes; ctx bounds it
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer res.Body.Close()
	if res.StatusCode/100 != 2 {
		raw, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		var eb struct {
			Error apiError `json:"error"`
		}
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Message == "" {
			return fmt.Errorf("GET %s: HTTP %d", path, res.StatusCode)
		}
		eb.Error.Status = res.StatusCode
		return &eb.Error
	}
	if _, err := io.Copy(w, res.Body); err != nil {
		return fmt.Errorf("GET %s: export interrupted: %w", path, err)
	}
	return nil
}

// apiError is an error answer of the admin API.
type apiError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

func (e *apiError) Error() string { return tidyMessage(e.Message) }

// do sends a request and decodes a 2xx answer into out (when not nil); it returns the raw
// body too, for -o json.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, in, out any) ([]byte, error) {
	u := c.base.JoinPath(path)
	u.RawQuery = query.Encode()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if res.StatusCode/100 != 2 {
		var eb struct {
			Error apiError `json:"error"`
		}
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Message == "" {
			return nil, fmt.Errorf("%s %s: HTTP %d (is -addr a purser admin API?)", method, path, res.StatusCode)
		}
		eb.Error.Status = res.StatusCode
		return nil, &eb.Error
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return raw, nil
}

// printJSON writes an API answer indented.
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// listFlag is a repeatable string flag; each value may also be comma separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// parseWhen reads an instant: RFC 3339, a date (UTC midnight) or a duration from now ("720h").
func parseWhen(name, s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d).UTC().Truncate(time.Second), nil
	}
	return time.Time{}, fmt.Errorf("-%s %q: want an RFC 3339 time, a date (2027-01-01) or a duration from now (720h)", name, s)
}
