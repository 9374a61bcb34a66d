package admin

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/purser-dev/purser/budget"
)

// Request is one per-request record of GET /v1/requests: a reservation with who made it, the
// hold, the actual charge and the outcome. Money is USD, tokens whole tokens, both decimal
// strings; actual amounts and usage are null until the request is resolved.
type Request struct {
	ID             string     `json:"id"`
	State          string     `json:"state"` // pending | settled | voided | expired
	Cause          *string    `json:"cause"` // why it resolved so: usage, no_upstream, provider_error, expired, unreserved, ...
	Subjects       []string   `json:"subjects"`
	KeyID          *string    `json:"key_id"`
	Provider       string     `json:"provider"`
	APIFlavor      string     `json:"api_flavor"`
	Model          string     `json:"model"`
	Route          string     `json:"route"`
	RequestID      *string    `json:"request_id"`
	HoldCost       string     `json:"hold_cost"`
	HoldTokens     string     `json:"hold_tokens"`
	ActualCost     *string    `json:"actual_cost"`
	ActualTokens   *string    `json:"actual_tokens"`
	InputTokens    *string    `json:"input_tokens"`
	OutputTokens   *string    `json:"output_tokens"`
	OverrunCost    string     `json:"overrun_cost"`
	OverrunTokens  string     `json:"overrun_tokens"`
	Unreserved     bool       `json:"unreserved"`
	CatalogVersion *string    `json:"catalog_version"`
	CreatedAt      time.Time  `json:"created_at"`
	ExpiresAt      time.Time  `json:"expires_at"`
	ResolvedAt     *time.Time `json:"resolved_at"`
}

func toRequest(x budget.RequestRecord) Request {
	usd := func(v int64) string { return FormatAmount(budget.USD, v) }
	tok := func(v int64) string { return strconv.FormatInt(v, 10) }
	opt := func(v *int64, f func(int64) string) *string {
		if v == nil {
			return nil
		}
		s := f(*v)
		return &s
	}
	r := Request{ID: x.ID, State: x.State, Cause: x.Cause, Subjects: nonNil(x.Subjects), KeyID: x.KeyID, Provider: x.Provider,
		APIFlavor: x.Flavor, Model: x.Model, Route: x.Route, RequestID: x.RequestID, HoldCost: usd(x.HoldCost),
		HoldTokens: tok(x.HoldTokens), ActualCost: opt(x.ActualCost, usd), ActualTokens: opt(x.ActualTokens, tok),
		InputTokens: opt(x.InputTokens, tok), OutputTokens: opt(x.OutputTokens, tok), OverrunCost: usd(x.OverrunCost),
		OverrunTokens: tok(x.OverrunTokens), Unreserved: x.Unreserved, CatalogVersion: x.CatalogVersion,
		CreatedAt: x.CreatedAt.UTC(), ExpiresAt: x.ExpiresAt.UTC(), ResolvedAt: x.ResolvedAt}
	if r.ResolvedAt != nil {
		t := r.ResolvedAt.UTC()
		r.ResolvedAt = &t
	}
	return r
}

// requestCSVHeader names the CSV export's columns, in order (the JSON fields of Request).
var requestCSVHeader = []string{"id", "state", "cause", "subjects", "key_id", "provider", "api_flavor", "model", "route",
	"request_id", "hold_cost", "hold_tokens", "actual_cost", "actual_tokens", "input_tokens", "output_tokens",
	"overrun_cost", "overrun_tokens", "unreserved", "catalog_version", "created_at", "expires_at", "resolved_at"}

// csvRow is the request as a CSV row: subjects space separated (a subject has no spaces),
// nulls empty, times RFC 3339 with nanoseconds.
func (r Request) csvRow() []string {
	s := func(p *string) string {
		if p == nil {
			return ""
		}
		return csvCell(*p)
	}
	t := func(p *time.Time) string {
		if p == nil {
			return ""
		}
		return p.Format(time.RFC3339Nano)
	}
	return []string{r.ID, r.State, s(r.Cause), csvCell(strings.Join(r.Subjects, " ")), s(r.KeyID), csvCell(r.Provider),
		csvCell(r.APIFlavor), csvCell(r.Model), csvCell(r.Route), s(r.RequestID), r.HoldCost, r.HoldTokens, s(r.ActualCost),
		s(r.ActualTokens), s(r.InputTokens), s(r.OutputTokens), r.OverrunCost, r.OverrunTokens, strconv.FormatBool(r.Unreserved),
		s(r.CatalogVersion), r.CreatedAt.Format(time.RFC3339Nano), r.ExpiresAt.Format(time.RFC3339Nano), t(r.ResolvedAt)}
}

// exportPage is how many records an export reads per query.
const exportPage = 1000

// requestQuery reads the filters and the page of GET /v1/requests.
func requestQuery(r *http.Request) (budget.RequestQuery, error) {
	q := r.URL.Query()
	rq := budget.RequestQuery{KeyID: q.Get("key"), Model: q.Get("model"), State: q.Get("state"), BeforeID: q.Get("before")}
	var err error
	if rq.Subject, err = querySubject(r); err != nil {
		return rq, err
	}
	if v := q.Get("from"); v != "" {
		if rq.From, err = parseTimeParam("from", v, false); err != nil {
			return rq, err
		}
	}
	if v := q.Get("to"); v != "" {
		if rq.To, err = parseTimeParam("to", v, true); err != nil {
			return rq, err
		}
	}
	rq.Limit, err = pageSize(r)
	return rq, err
}

func (s *API) listRequests(r *http.Request, c caller) (int, any, error) {
	q, err := requestQuery(r)
	if err != nil {
		return 0, nil, err
	}
	q.Scope = c.scope()
	return s.requests(r, q)
}

// myRequests lists the requests made with the caller's key.
func (s *API) myRequests(r *http.Request, c caller) (int, any, error) {
	q, err := requestQuery(r)
	if err != nil {
		return 0, nil, err
	}
	if q.KeyID != "" && q.KeyID != c.key().ID {
		return 0, nil, invalid("key", "a key holder sees only its own key's requests")
	}
	q.KeyID = c.key().ID
	return s.requests(r, q)
}

func (s *API) requests(r *http.Request, q budget.RequestQuery) (int, any, error) {
	format, err := queryFormat(r, formatCSV, formatJSONL)
	if err != nil {
		return 0, nil, err
	}
	if format != formatJSON {
		// An export is every record the filters select, from the newest (or before), fetched
		// a page at a time and written as it comes.
		q.Limit = exportPage
		return http.StatusOK, s.requestsExport(r, q, format), nil
	}
	q.Limit++
	rs, err := s.svc.Requests(r.Context(), q)
	if err != nil {
		return 0, nil, err
	}
	rs, next := nextPage(rs, q.Limit-1, func(x budget.RequestRecord) any { return x.ID })
	out := make([]Request, 0, len(rs))
	for _, x := range rs {
		out = append(out, toRequest(x))
	}
	return http.StatusOK, map[string]any{"requests": out, "next_before": next}, nil
}

func (s *API) requestsExport(r *http.Request, q budget.RequestQuery, format string) *stream {
	name := "requests-" + s.cfg.Now().UTC().Format("20060102T150405Z")
	if format == formatCSV {
		return &stream{contentType: "text/csv; charset=utf-8", filename: name + ".csv", write: func(w *bufio.Writer) error {
			var cw interface {
				Write([]string) error
				Flush()
				Error() error
			}
			err := s.svc.EachRequest(r.Context(), q, func(x budget.RequestRecord) error {
				if cw == nil { // the header goes out with the first page: an invalid query is still a JSON 400
					c, err := newCSV(w, requestCSVHeader...)
					if err != nil {
						return err
					}
					cw = c
				}
				return cw.Write(toRequest(x).csvRow())
			})
			if err != nil {
				return err
			}
			if cw == nil {
				c, err := newCSV(w, requestCSVHeader...)
				if err != nil {
					return err
				}
				cw = c
			}
			cw.Flush()
			return cw.Error()
		}}
	}
	return &stream{contentType: "application/jsonl; charset=utf-8", filename: name + ".jsonl", write: func(w *bufio.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		return s.svc.EachRequest(r.Context(), q, func(x budget.RequestRecord) error { return enc.Encode(toRequest(x)) })
	}}
}
