package pricing

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// MaxCostLine is the longest input line RunCost accepts.
const MaxCostLine = 10 << 20

type costLine struct {
	Provider  string         `json:"provider"`
	APIFlavor string         `json:"api_flavor"`
	Model     string         `json:"model"`
	At        string         `json:"at"` // price at this instant (RFC 3339); absent: now
	Body      map[string]any `json:"body"`
}

type costResult struct {
	At         string `json:"at,omitempty"` // the instant priced, as the line gave it
	Model      string `json:"model"`
	Provider   string `json:"provider"`
	Usage      Usage  `json:"usage"`
	InputCost  string `json:"input_cost"`
	OutputCost string `json:"output_cost"`
	TotalCost  string `json:"total_cost"`
}

type costError struct {
	Error string `json:"error"`
}

// RunCost is the core of `purser cost`. It reads JSON lines
//
//	{"provider": "openai", "api_flavor": "chat", "model": "gpt-4o", "body": {...}}
//
// (api_flavor optional: inferred from the body; model optional when the body names it; "at",
// an RFC 3339 time, optional: price with the prices in force at that instant, as settlement
// does with a request's start time) and writes one JSON line per input line, priced (now
// unless "at" says otherwise) through PriceResponse:
//
//	{"model": "gpt-4o", "provider": "openai", "usage": {...}, "input_cost": "0.000150", "output_cost": "...", "total_cost": "..."}
//
// or {"error": "line 3: ..."} for a line that cannot be priced (invalid JSON, unknown fields,
// a line over 10 MiB, no usage, unknown model, ...); it then goes on with the next line.
// Blank lines are skipped. It returns an error only when reading or writing fails or ctx ends.
func RunCost(ctx context.Context, cat *Catalog, in io.Reader, out io.Writer) error {
	br := bufio.NewReaderSize(in, 64<<10)
	bw := bufio.NewWriter(out)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		line, tooLong, err := readLine(br, MaxCostLine)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read input: %w", err)
		}
		eof := errors.Is(err, io.EOF)
		if tooLong {
			if werr := enc.Encode(costError{fmt.Sprintf("line %d: longer than %d bytes", n, MaxCostLine)}); werr != nil {
				return fmt.Errorf("write output: %w", werr)
			}
		} else if len(bytes.TrimSpace(line)) > 0 {
			var v any
			if res, lerr := cat.costOneLine(line); lerr != nil {
				v = costError{fmt.Sprintf("line %d: %v", n, lerr)}
			} else {
				v = res
			}
			if werr := enc.Encode(v); werr != nil {
				return fmt.Errorf("write output: %w", werr)
			}
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		if eof {
			return nil
		}
	}
}

func (c *Catalog) costOneLine(line []byte) (costResult, error) {
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	d.DisallowUnknownFields()
	var cl costLine
	if err := d.Decode(&cl); err != nil {
		return costResult{}, fmt.Errorf("invalid input: %w", err)
	}
	if d.More() {
		return costResult{}, errors.New("invalid input: more than one JSON value on the line")
	}
	if cl.Body == nil {
		return costResult{}, errors.New("invalid input: missing body")
	}
	at := time.Now()
	if cl.At != "" {
		t, err := time.Parse(time.RFC3339Nano, cl.At)
		if err != nil {
			return costResult{}, fmt.Errorf("invalid input: at: want an RFC 3339 time such as \"2026-01-02T15:04:05Z\", got %q", cl.At)
		}
		at = t
	}
	p, err := c.PriceResponse(cl.Provider, cl.APIFlavor, cl.Model, cl.Body, at)
	if err != nil {
		return costResult{}, err
	}
	return costResult{
		At:         cl.At,
		Model:      p.Model.ID,
		Provider:   p.Model.Provider,
		Usage:      p.Usage,
		InputCost:  FormatMicros(p.Cost.Input),
		OutputCost: FormatMicros(p.Cost.Output),
		TotalCost:  FormatMicros(p.Cost.Total),
	}, nil
}

// readLine reads one '\n'-terminated line (without the terminator). A line longer than limit
// is consumed and dropped: tooLong is set and line is nil. At the end of input it returns the
// last (possibly empty) line with io.EOF.
func readLine(br *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	var buf []byte
	for {
		chunk, rerr := br.ReadSlice('\n')
		if !tooLong {
			if len(buf)+len(chunk) > limit+2 { // room for a "\r\n" terminator
				tooLong, buf = true, nil
			} else {
				buf = append(buf, chunk...)
			}
		}
		if errors.Is(rerr, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return nil, true, rerr
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(buf, []byte("\n")), []byte("\r"))
		if len(line) > limit {
			return nil, true, rerr
		}
		return line, false, rerr
	}
}
