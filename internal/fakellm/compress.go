package fakellm

import (
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Content codings, as named in Accept-Encoding / Content-Encoding.
const (
	CodingGzip    = "gzip"
	CodingBrotli  = "br"
	CodingZstd    = "zstd"
	CodingDeflate = "deflate"
)

// Codings each provider answers with, in the order it prefers them: the first one the
// client accepts is used, for JSON bodies and event streams alike (the whole response,
// flushed per event, so a stream stays a stream). A client that sends no Accept-Encoding,
// or only identity, gets an uncompressed answer; none of them answers deflate, although
// Python's httpx offers it.
//
// What the providers do, as their users reported it:
//   - OpenAI (behind Cloudflare) gzip-compresses JSON answers (Helicone/helicone#4562: a
//     proxy's parser failed on them until it sent accept-encoding: identity), answers brotli
//     to clients that offer br (ChatGPTNextWeb/NextChat#3215) and compresses event streams
//     with gzip or zstd when offered (Wei-Shaw/sub2api#3603).
//   - Anthropic gzip-compresses event streams and JSON (Wei-Shaw/claude-relay-service#1027,
//     editor-code-assistant/eca#479, vm0-ai/vm0#8884).
//   - Google's front end answers the Gemini API with gzip.
var providerCodings = map[string][]string{
	"openai":    {CodingZstd, CodingBrotli, CodingGzip},
	"anthropic": {CodingGzip},
	"gemini":    {CodingGzip},
}

// providerOf maps a Record.API to the provider whose behaviour it imitates.
func providerOf(api string) string {
	switch api {
	case "anthropic", "count_tokens":
		return "anthropic"
	case "gemini":
		return "gemini"
	}
	return "openai"
}

// negotiate picks the coding for a request's Accept-Encoding (RFC 9110 12.5.3): the first of
// the provider's codings the client accepts with a non-zero q, "*" covering codings it does
// not name; "" for none.
func negotiate(acceptEncoding string, offered []string) string {
	if strings.TrimSpace(acceptEncoding) == "" {
		return ""
	}
	q := map[string]float64{}
	for _, part := range strings.Split(acceptEncoding, ",") {
		name, params, _ := strings.Cut(part, ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		v := 1.0
		for _, p := range strings.Split(params, ";") {
			k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
					v = f
				}
			}
		}
		q[name] = v
	}
	for _, c := range offered {
		if v, ok := q[c]; ok {
			if v > 0 {
				return c
			}
			continue
		}
		if v, ok := q["*"]; ok && v > 0 {
			return c
		}
	}
	return ""
}

// encoder is a streaming compressor that can be flushed mid-stream.
type encoder interface {
	io.WriteCloser
	Flush() error
}

func newEncoder(coding string, w io.Writer) encoder {
	switch coding {
	case CodingGzip:
		return gzip.NewWriter(w)
	case CodingBrotli:
		return brotli.NewWriter(w)
	case CodingZstd:
		z, err := zstd.NewWriter(w)
		if err != nil {
			panic(err) // only invalid options fail, and none are passed
		}
		return z
	}
	return nil
}

// compressingWriter compresses a response with one coding. Headers are adjusted when the
// status is written: content-encoding set, content-length dropped, vary added.
type compressingWriter struct {
	http.ResponseWriter
	coding  string
	enc     encoder
	started bool
}

func (c *compressingWriter) WriteHeader(status int) {
	if c.started {
		return
	}
	c.started = true
	h := c.Header()
	h.Set("content-encoding", c.coding)
	h.Del("content-length")
	h.Add("vary", "Accept-Encoding")
	c.enc = newEncoder(c.coding, c.ResponseWriter)
	c.ResponseWriter.WriteHeader(status)
}

func (c *compressingWriter) Write(b []byte) (int, error) {
	if !c.started {
		c.WriteHeader(http.StatusOK)
	}
	return c.enc.Write(b)
}

// Flush pushes what was compressed so far to the client (a sync flush: the bytes sent so far
// decompress to everything written so far).
func (c *compressingWriter) Flush() {
	if c.enc != nil {
		_ = c.enc.Flush()
	}
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// finish ends the compressed stream (the coding's trailer).
func (c *compressingWriter) finish() {
	if c.enc != nil {
		_ = c.enc.Close()
	}
}
