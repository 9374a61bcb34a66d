package admin

import (
	"bufio"
	"encoding/csv"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Export formats (the "format" query parameter of lists that can be exported).
const (
	formatJSON  = "json"
	formatCSV   = "csv"
	formatJSONL = "jsonl"
)

// exporting reports whether r asks for a streamed export.
func exporting(r *http.Request) bool {
	f := r.URL.Query().Get("format")
	return f == formatCSV || f == formatJSONL
}

// queryFormat reads the "format" parameter: json (default) or one of also.
func queryFormat(r *http.Request, also ...string) (string, error) {
	f := r.URL.Query().Get("format")
	if f == "" || f == formatJSON {
		return formatJSON, nil
	}
	for _, a := range also {
		if f == a {
			return f, nil
		}
	}
	return "", invalid("format", "must be json or %s, got %q", strings.Join(also, " or "), f)
}

// stream is a handler's answer written as it is produced, not buffered whole: exports of
// millions of records.
type stream struct {
	contentType string
	filename    string
	truncated   bool // the export stops at a limit: X-Purser-Truncated: true
	// write produces the body. An error before its first write is answered as usual (JSON);
	// after it, the response is aborted, so a client never takes a cut export for a whole one.
	write func(w *bufio.Writer) error
}

// lazyWriter sends the status line and headers on the first write.
type lazyWriter struct {
	w       http.ResponseWriter
	st      *stream
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		h := l.w.Header()
		h.Set("Content-Type", l.st.contentType)
		h.Set("Content-Disposition", `attachment; filename="`+l.st.filename+`"`)
		h.Set("X-Content-Type-Options", "nosniff")
		if l.st.truncated {
			h.Set("X-Purser-Truncated", "true")
		}
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}

// exportChunk is how much an export buffers before it writes (and flushes) to the client.
const exportChunk = 64 << 10

func (s *API) writeStream(w http.ResponseWriter, r *http.Request, st *stream) {
	// An export may outlast the server's write timeout: give it the export timeout instead.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.ExportTimeout))
	lw := &lazyWriter{w: w, st: st}
	bw := bufio.NewWriterSize(flushWriter{lw, w}, exportChunk)
	err := st.write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && !lw.started { // an empty export still has its headers (and a CSV its header row)
		_, err = lw.Write(nil)
	}
	if err == nil {
		return
	}
	if !lw.started {
		s.fail(w, r, err)
		return
	}
	s.log.LogAttrs(r.Context(), slog.LevelError, "export aborted",
		slog.String("route", r.Pattern), slog.String("error", err.Error()))
	panic(http.ErrAbortHandler) // the client sees a broken response, not a short file
}

// flushWriter flushes the response after every buffered chunk, so a slow export shows
// progress and never sits in memory.
type flushWriter struct {
	w  *lazyWriter
	rw http.ResponseWriter
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		_ = http.NewResponseController(f.rw).Flush()
	}
	return n, err
}

// csvCell guards a cell against spreadsheet formula injection: text that a spreadsheet
// would evaluate (starting with =, +, -, @, tab or carriage return) gets a leading '
// (request ids and model names come from callers). Amounts and times never start so.
func csvCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// newCSV returns a CSV writer with the header row written.
func newCSV(w *bufio.Writer, header ...string) (*csv.Writer, error) {
	cw := csv.NewWriter(w)
	return cw, cw.Write(header)
}
