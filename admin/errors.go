package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/purser-dev/purser/budget"
)

// Error codes of the {"error": {"code", "message", "field"}} body.
const (
	codeInvalid      = "invalid"      // 400 (and 405)
	codeUnauthorized = "unauthorized" // 401
	codeForbidden    = "forbidden"    // 403
	codeNotFound     = "not_found"    // 404
	codeConflict     = "conflict"     // 409
	codeTooLarge     = "too_large"    // 413
	codeUnavailable  = "unavailable"  // 503: the database cannot be reached; retry
	codeInternal     = "internal"     // 500
)

// apiError is an error with its HTTP answer decided.
type apiError struct {
	status int
	code   string
	msg    string
	field  string
}

func (e *apiError) Error() string { return e.msg }

func invalid(field, format string, args ...any) *apiError {
	msg := fmt.Sprintf(format, args...)
	if field != "" {
		msg = field + ": " + msg
	}
	return &apiError{status: http.StatusBadRequest, code: codeInvalid, msg: msg, field: field}
}

// outOfScope refuses a manager a resource outside its scope.
func outOfScope(c caller, what string) *apiError {
	return &apiError{status: http.StatusForbidden, code: codeForbidden,
		msg: fmt.Sprintf("%s is outside your scope (%s)", what, strings.Join(c.scope(), ", "))}
}

func conflict(format string, args ...any) *apiError {
	return &apiError{status: http.StatusConflict, code: codeConflict, msg: fmt.Sprintf(format, args...)}
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// fail is the one place errors become HTTP answers. Internal errors are logged (they never
// carry secrets: the ledger does not put them in errors) and answered without detail.
func (s *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	ae := s.classify(r, err)
	if ae.status >= 500 {
		s.log.LogAttrs(r.Context(), slog.LevelError, "admin request failed",
			slog.String("method", r.Method), slog.String("route", r.Pattern), slog.String("path", r.URL.Path),
			slog.Int("status", ae.status), slog.String("error", err.Error()))
	}
	if ae.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="purser"`)
	}
	writeError(w, ae)
}

func (s *API) classify(r *http.Request, err error) *apiError {
	var ae *apiError
	var fe *budget.FieldError
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &maxErr):
		return &apiError{status: http.StatusRequestEntityTooLarge, code: codeTooLarge,
			msg: fmt.Sprintf("request body is larger than %d bytes", maxErr.Limit)}
	case errors.As(err, &fe):
		return &apiError{status: http.StatusBadRequest, code: codeInvalid, msg: fe.Error(), field: fe.Field}
	case errors.Is(err, budget.ErrNotFound):
		return &apiError{status: http.StatusNotFound, code: codeNotFound, msg: notFoundMessage(r)}
	case errors.Is(err, budget.ErrConflict):
		return &apiError{status: http.StatusConflict, code: codeConflict, msg: conflictMessage(err)}
	case errors.Is(err, budget.ErrForbidden):
		return &apiError{status: http.StatusForbidden, code: codeForbidden, msg: strings.TrimPrefix(err.Error(), "forbidden: ")}
	case errors.Is(err, budget.ErrInvalid):
		return &apiError{status: http.StatusBadRequest, code: codeInvalid, msg: strings.TrimPrefix(err.Error(), "invalid: ")}
	case errors.Is(err, budget.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable,
			msg: "the ledger database is unavailable or slow; retry later"}
	}
	return &apiError{status: http.StatusInternalServerError, code: codeInternal, msg: "internal error (logged)"}
}

// notFoundMessage names what was not found from the route: /v1/budgets/{id} -> "budget 12 not found".
func notFoundMessage(r *http.Request) string {
	id := r.PathValue("id")
	if id == "" {
		return "not found"
	}
	rest := strings.TrimPrefix(r.URL.Path, "/v1/")
	kind, _, _ := strings.Cut(rest, "/")
	kind = strings.TrimSuffix(kind, "s")
	return fmt.Sprintf("%s %s not found", kind, id)
}

// conflictMessage explains a conflict the ledger named.
func conflictMessage(err error) string {
	for _, kind := range []error{budget.ErrBudgetNameTaken, budget.ErrTemplateNameTaken} {
		if errors.Is(err, kind) {
			return kind.Error()
		}
	}
	return "the change conflicts with existing data"
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, errorBody{Error: errorDetail{Code: e.code, Message: e.msg, Field: e.field}})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	if body == nil {
		w.WriteHeader(status)
		return
	}
	b, err := json.Marshal(body)
	if err != nil { // only for a programming error in a response type
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"internal error (encode)"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
