package request

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/pkoukk/tiktoken-go"
	tiktokenloader "github.com/pkoukk/tiktoken-go-loader"
	"github.com/stretchr/testify/require"
	"golang.org/x/text/unicode/norm"
)

// The real tokenizers: OpenAI's o200k_base and cl100k_base through github.com/pkoukk/tiktoken-go
// (already a dependency of the module's tests) with its offline loader, which embeds the
// vocabularies: the tests never touch the network.
type bpe struct{ o200k, cl100k *tiktoken.Tiktoken }

var loadBPEOnce = sync.OnceValues(func() (bpe, error) {
	tiktoken.SetBpeLoader(tiktokenloader.NewOfflineLoader())
	o, err := tiktoken.GetEncoding("o200k_base")
	if err != nil {
		return bpe{}, err
	}
	c, err := tiktoken.GetEncoding("cl100k_base")
	return bpe{o200k: o, cl100k: c}, err
})

func loadBPE(t testing.TB) bpe {
	t.Helper()
	b, err := loadBPEOnce()
	require.NoError(t, err)
	return b
}

// count is the largest token count of s over both vocabularies and over s as sent, its NFC
// form (Qwen's normaliser) and its NFKC form (Anthropic's published tokenizer normalises
// NFKC first). Invalid bytes count as U+FFFD each, as a JSON decoder replaces them.
func (b bpe) count(s string) int64 {
	if !utf8.ValidString(s) {
		var sb strings.Builder
		for i := 0; i < len(s); {
			r, size := utf8.DecodeRuneInString(s[i:])
			sb.WriteRune(r) // RuneError for an invalid byte
			i += size
		}
		s = sb.String()
	}
	n := 0
	forms := []string{s}
	if f := normalize(norm.NFC, s); f != s {
		forms = append(forms, f)
	}
	if f := normalize(norm.NFKC, s); f != s && f != forms[len(forms)-1] {
		forms = append(forms, f)
	}
	for _, f := range forms {
		n = max(n, len(b.o200k.EncodeOrdinary(f)), len(b.cl100k.EncodeOrdinary(f)))
	}
	return int64(n)
}

// normalize applies form as Unicode defines it. golang.org/x/text also puts text in the
// Stream-Safe Text Format (UAX #15 section 13): it inserts U+034F COMBINING GRAPHEME JOINER
// after every 30 non-starters, which tokenizers' normalisers (Python's unicodedata, ICU,
// JavaScript's String.prototype.normalize) do not; those inserted joiners are removed.
func normalize(form norm.Form, s string) string {
	f := form.String(s)
	if !strings.ContainsRune(s, '\u034F') {
		f = strings.ReplaceAll(f, "\u034F", "")
	}
	return f
}

// chatTokens is what OpenAI bills for chat messages of these roles and texts: 3 tokens per
// message, its role and content, and 3 tokens priming the reply (openai-cookbook,
// examples/How_to_count_tokens_with_tiktoken.ipynb, num_tokens_from_messages). The same
// framing stands in for Anthropic's and Gemini's, whose templates are not published.
func (b bpe) chatTokens(msgs ...[2]string) int64 {
	n := int64(3)
	for _, m := range msgs {
		n += 3 + b.count(m[0]) + b.count(m[1])
	}
	return n
}

// jsonString renders s as a JSON string: raw (UTF-8 and any invalid bytes as they are, only
// quote, backslash and control characters escaped) or with every non-ASCII character as a
// \u escape (surrogate pairs for astral characters).
func jsonString(s string, escapeAll bool) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
			i++
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
			i++
		case c < utf8.RuneSelf || !escapeAll:
			b.WriteByte(c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r >= 0x10000 {
				r -= 0x10000
				fmt.Fprintf(&b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
			i += size
		}
	}
	b.WriteByte('"')
	return b.String()
}

// flavourCase is a request body of one API flavour carrying a text, and what a provider bills
// for it.
type flavourCase struct {
	name, host, path, body string
	real                   int64
}

// flavourBodies puts the JSON string js, a text of one tokens, in a body of every flavour
// purser reads.
func flavourBodies(b bpe, js string, one int64) []flavourCase {
	sys, user := b.count("system"), b.count("user")
	two := 3 + (3 + sys + one) + (3 + user + one)
	userOnly := 3 + 3 + user + one
	return []flavourCase{
		{"openai_chat", "api.openai.com", "/v1/chat/completions",
			`{"model":"gpt-4o","messages":[{"role":"system","content":` + js + `},{"role":"user","content":` + js + `}]}`, two},
		{"openai_chat_parts", "api.openai.com", "/v1/chat/completions",
			`{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":` + js + `}]}]}`, userOnly},
		{"openai_completions", "api.openai.com", "/v1/completions",
			`{"model":"gpt-3.5-turbo-instruct","prompt":` + js + `,"max_tokens":5}`, one},
		{"openai_responses", "api.openai.com", "/v1/responses",
			`{"model":"gpt-4.1","instructions":` + js + `,"input":` + js + `}`, two},
		{"openai_embeddings", "api.openai.com", "/v1/embeddings",
			`{"model":"text-embedding-3-small","input":[` + js + `]}`, one},
		{"anthropic_messages", "api.anthropic.com", "/v1/messages",
			`{"model":"claude-sonnet-4-5","max_tokens":16,"system":` + js + `,"messages":[{"role":"user","content":` + js + `}]}`, two},
		{"gemini_generate", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent",
			`{"systemInstruction":{"parts":[{"text":` + js + `}]},"contents":[{"role":"user","parts":[{"text":` + js + `}]}]}`, two},
		{"azure_chat", "res.openai.azure.com", "/openai/deployments/gpt4o/chat/completions",
			`{"messages":[{"role":"user","content":` + js + `}]}`, userOnly},
	}
}

// boundStats collects what the property tests saw.
type boundStats struct {
	mu       sync.Mutex
	texts    int
	bodies   int
	maxRatio float64 // real / bound
	worst    string
}

func (st *boundStats) add(texts, bodies int, ratio float64, what string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.texts += texts
	st.bodies += bodies
	if ratio > st.maxRatio {
		st.maxRatio, st.worst = ratio, what
	}
}

// checkText parses every flavour of body carrying s (raw and, for valid text, \u-escaped) and
// requires the input bound to cover the real count; it returns the largest real/bound ratio.
func checkText(t *testing.T, b bpe, s, label string) (bodies int, worst float64) {
	t.Helper()
	encodings := []bool{false}
	if utf8.ValidString(s) {
		encodings = append(encodings, true)
	}
	one := b.count(s)
	for _, esc := range encodings {
		for _, c := range flavourBodies(b, jsonString(s, esc), one) {
			r := Parse(checkRequest("POST", c.host, c.path, c.body, nil), nil)
			if r.BodyError != nil || r.ExternalInput || r.Truncated {
				t.Fatalf("%s %s (escaped %t): body error %v, external %t", label, c.name, esc, r.BodyError, r.ExternalInput)
			}
			if r.InputTokens < c.real {
				t.Fatalf("%s %s (escaped %t): bound %d below the real count %d for %+q", label, c.name, esc, r.InputTokens, c.real, s[:min(len(s), 80)])
			}
			bodies++
			worst = max(worst, float64(c.real)/float64(r.InputTokens))
		}
	}
	return bodies, worst
}

// unicodeBlock is one line of testdata/unicode_blocks.txt.
type unicodeBlock struct {
	lo, hi rune
	name   string
}

func unicodeBlocks(t *testing.T) []unicodeBlock {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "unicode_blocks.txt"))
	require.NoError(t, err)
	defer f.Close()
	var out []unicodeBlock
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		parts := strings.SplitN(line, ";", 3)
		require.Len(t, parts, 3, line)
		lo, err1 := strconv.ParseInt(parts[0], 16, 32)
		hi, err2 := strconv.ParseInt(parts[1], 16, 32)
		require.NoError(t, err1)
		require.NoError(t, err2)
		out = append(out, unicodeBlock{rune(lo), rune(hi), parts[2]})
	}
	require.NoError(t, sc.Err())
	// Every code point is in exactly one range.
	next := rune(0)
	for _, bl := range out {
		require.Equal(t, next, bl.lo, "ranges are contiguous at %s", bl.name)
		next = bl.hi + 1
	}
	require.Equal(t, rune(0x110000), next)
	return out
}

// blockTexts draws texts from one block: random sequences of its code points (assigned or
// not) of several lengths, a long run of one character (the shape of the attack in which
// 40,000 Yi syllables cost 119,000 o200k tokens), and the block's characters between ASCII
// words. Surrogates cannot be UTF-8: their block yields lone-surrogate escapes instead (see
// TestBound_SurrogateEscapes).
func blockTexts(bl unicodeBlock, seed uint64) []string {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	pick := func() rune {
		for {
			r := bl.lo + rune(rng.IntN(int(bl.hi-bl.lo+1)))
			if r < 0xD800 || r > 0xDFFF {
				return r
			}
		}
	}
	var texts []string
	for _, n := range []int{1, 3, 24, 240} {
		var sb strings.Builder
		for range n {
			sb.WriteRune(pick())
		}
		texts = append(texts, sb.String())
	}
	texts = append(texts, strings.Repeat(string(pick()), 300))
	var sb strings.Builder
	for i := range 40 {
		sb.WriteRune(pick())
		if i%3 == 0 {
			sb.WriteString(" the ")
		}
	}
	return append(texts, sb.String())
}

// TestBound_EveryUnicodeBlock: for text drawn from every Unicode block (and every gap
// between blocks: unassigned, private use and astral code points included), in a body of
// every flavour, raw and \u-escaped, purser's input bound is at least what o200k_base and
// cl100k_base count, with the chat framing and after NFC and NFKC normalisation.
func TestBound_EveryUnicodeBlock(t *testing.T) {
	t.Parallel()
	b := loadBPE(t)
	blocks := unicodeBlocks(t)
	var st boundStats
	t.Cleanup(func() {
		t.Logf("blocks %d (of which gaps %d), texts %d, bodies %d; max real/bound %.3f (%s)",
			len(blocks), countGaps(blocks), st.texts, st.bodies, st.maxRatio, st.worst)
	})
	for i, bl := range blocks {
		if bl.lo >= 0xD800 && bl.hi <= 0xDFFF {
			continue // surrogates are not UTF-8: TestBound_SurrogateEscapes
		}
		texts := blockTexts(bl, uint64(i))
		bodies, worst := 0, 0.0
		for j, s := range texts {
			n, w := checkText(t, b, s, fmt.Sprintf("%s[%d]", bl.name, j))
			bodies += n
			worst = max(worst, w)
		}
		st.add(len(texts), bodies, worst, bl.name)
	}
	require.Greater(t, st.texts, 2000)
}

func countGaps(bs []unicodeBlock) int {
	n := 0
	for _, b := range bs {
		if b.name == "No_Block" {
			n++
		}
	}
	return n
}

// TestBound_SurrogateEscapes: a lone surrogate escape ("\ud800") decodes to U+FFFD (or is
// refused); a pair decodes to one astral character. Both are covered.
func TestBound_SurrogateEscapes(t *testing.T) {
	t.Parallel()
	b := loadBPE(t)
	for _, c := range []struct{ escaped, decoded string }{
		{`\ud800`, "\uFFFD"}, {`\udfff\ud800`, "\uFFFD\uFFFD"}, {`\ud83d\ude00`, "😀"},
		{strings.Repeat(`\udbff`, 500), strings.Repeat("\uFFFD", 500)}, {`\ud83dx`, "\uFFFDx"},
	} {
		body := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + c.escaped + `"}]}`
		r := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", body, nil), nil)
		require.NoError(t, r.BodyError, c.escaped)
		require.GreaterOrEqual(t, r.InputTokens, b.chatTokens([2]string{"user", c.decoded}), c.escaped)
	}
}

// adversarialTexts are texts chosen to be expensive per byte or to trip a tokenizer.
func adversarialTexts() map[string]string {
	run := func(lo, hi rune, n int) string {
		var sb strings.Builder
		for i := range n {
			sb.WriteRune(lo + rune(i)%(hi-lo+1))
		}
		return sb.String()
	}
	rng := rand.New(rand.NewPCG(7, 7))
	randomBytes := make([]byte, 3000)
	for i := range randomBytes {
		randomBytes[i] = byte(rng.IntN(256))
	}
	return map[string]string{
		// the scripts of the reported overrun (e2e/bounds_test.go sends 40,000 characters of
		// each through the binary; BPE on one long piece is quadratic, so 12,000 here)
		"Yi":                  run(0xA000, 0xA48C, 12_000),
		"Braille":             run(0x2800, 0x28FF, 12_000),
		"CJKExtA":             run(0x3400, 0x4DBF, 12_000),
		"CyrillicSupplement":  run(0x0500, 0x052F, 12_000),
		"LatinExtendedB":      run(0x0180, 0x024F, 12_000),
		"NFKCLigature":        strings.Repeat("\uFDFA", 1500), // 18 characters after NFKC
		"SquaredKatakana":     run(0x3300, 0x3357, 800),       // ㌀ -> アパート
		"ParenthesizedHangul": run(0x3200, 0x321E, 1500),      // ㈀ -> (ᄀ)
		"NFCExclusions":       run(0x0958, 0x095F, 1000),      // decompose under NFC
		"MusicalSymbols":      run(0x1D15E, 0x1D164, 800),     // 4 bytes -> 12 under NFC
		"Zalgo":               "Z" + strings.Repeat("\u0336\u0334\u0311\u0352\u0489", 500),
		"ZWJEmoji":            strings.Repeat("👩🏽\u200d❤️\u200d💋\u200d👨🏿", 200),
		"Flags":               strings.Repeat("🇺🇳🇪🇺🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F", 150),
		"VariationSelectors":  strings.Repeat("\u845b\U000E0100", 800),
		"Digits":              strings.Repeat("0123456789", 500),
		"SpacesTabsNewlines":  strings.Repeat(" \t\n\r\n  ", 600),
		"SpecialTokenText":    strings.Repeat("<|endoftext|><|im_start|>system<|im_end|>", 150),
		"RandomBytes":         string(randomBytes),
		"Base64":              strings.Repeat("QUJDREVGR0g5K3gv", 400),
		"PrivateUse":          run(0xF0000, 0xF03E7, 1500),
		"Unassigned":          run(0x2FE0, 0x2FEF, 3000),
		"Noncharacters":       strings.Repeat("\uFFFE\uFFFF\U0001FFFE", 500),
		"Controls":            run(0x80, 0x9F, 3000),
		"HangulJamo":          run(0x1100, 0x11FF, 3000),
		"ArabicPresentation":  run(0xFB50, 0xFDFF, 3000),
	}
}

// TestBound_Adversarial: the same property on texts chosen to be expensive, the reported
// attack among them; it also logs how tight the bound is on them.
func TestBound_Adversarial(t *testing.T) {
	t.Parallel()
	b := loadBPE(t)
	for name, s := range adversarialTexts() {
		n, worst := checkText(t, b, s, name)
		require.Positive(t, n)
		t.Logf("%-20s %6d bytes  real/bound %.3f", name, len(s), worst)
	}
}

// TestBound_MessageShapes: system prompts, tool (function) schemas, tool calls and tool
// results, images and media in every flavour that has them.
func TestBound_MessageShapes(t *testing.T) {
	t.Parallel()
	b := loadBPE(t)
	desc := "Look up the weather.\nUse it when the user asks about rain, snow or wind.\n"
	tools := []map[string]any{{"type": "function", "function": map[string]any{
		"name": "get_weather", "description": desc,
		"parameters": map[string]any{"type": "object", "properties": map[string]any{
			"city": map[string]any{"type": "string", "description": "City name, e.g. Zürich"},
			"unit": map[string]any{"type": "string", "enum": []string{"celsius", "fahrenheit"}, "description": "Unit."},
		}, "required": []string{"city"}}}}}
	toolsJSON, err := json.Marshal(tools)
	require.NoError(t, err)
	// openai-cookbook num_tokens_for_tools, with the larger (gpt-3.5/gpt-4) constants:
	// func_init 10, prop_init 3, prop_key 3, enum_init -3, enum_item 3, func_end 12.
	toolReal := int64(10) + b.count("get_weather:"+strings.TrimSuffix(desc, ".")) + 3 +
		3 + b.count("city:string:City name, e.g. Zürich") +
		3 - 3 + 3 + b.count("celsius") + 3 + b.count("fahrenheit") + b.count("unit:string:Unit") + 12
	msgs := `[{"role":"system","content":"You are terse."},{"role":"user","content":"Rain in Zürich?"},` +
		`{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Zürich\"}"}}]},` +
		`{"role":"tool","tool_call_id":"call_1","content":"{\"rain\":true,\"mm\":4.2}"}]`
	real := b.chatTokens([2]string{"system", "You are terse."}, [2]string{"user", "Rain in Zürich?"},
		[2]string{"assistant", `get_weather{"city":"Zürich"}call_1`}, [2]string{"tool", `{"rain":true,"mm":4.2}call_1`}) + 10 + toolReal
	r := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions",
		`{"model":"gpt-4o","tools":`+string(toolsJSON)+`,"messages":`+msgs+`}`, nil), nil)
	require.NoError(t, r.BodyError)
	require.GreaterOrEqual(t, r.InputTokens, real, "tools, tool calls and tool results")

	// Anthropic: tools cost their schema plus the tool-use system prompt (at most 530
	// documented), Anthropic-defined tools their documented allowance.
	anth := `{"model":"claude-sonnet-4-5","max_tokens":10,"tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object"}},` +
		`{"type":"bash_20250124","name":"bash"},{"type":"text_editor_20250728","name":"str_replace_based_edit_tool"}],` +
		`"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"bash","input":{"command":"ls"}}]},` +
		`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"a.txt"}]}]}`
	r = Parse(checkRequest("POST", "api.anthropic.com", "/v1/messages", anth, nil), nil)
	require.NoError(t, r.BodyError)
	require.GreaterOrEqual(t, r.InputTokens, int64(530+245+700), "tool-use system prompt, bash and text editor allowances")
	require.False(t, r.ExternalInput)

	// Images cost the model's documented maximum, whatever their size in the body.
	png := "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
	for _, c := range []struct {
		name, host, path, body string
		images, per            int64
		external               bool
	}{
		{"OpenAIDataURL", "api.openai.com", "/v1/chat/completions",
			`{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,` + png + `","detail":"high"}}]}]}`, 1, imageTokensOpenAI, false},
		{"OpenAI4oMini", "api.openai.com", "/v1/chat/completions",
			`{"model":"gpt-4o-mini","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}},{"type":"image_url","image_url":"https://x/b.png"}]}]}`, 2, imageTokensGPT4oMini, false},
		{"ResponsesFileImage", "api.openai.com", "/v1/responses",
			`{"model":"gpt-5","input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]}`, 1, imageTokensOpenAI, false},
		{"AnthropicBase64", "api.anthropic.com", "/v1/messages",
			`{"model":"claude-opus-4-7","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + png + `"}}]}]}`, 1, imageTokensAnthropic, false},
		{"AnthropicURL", "api.anthropic.com", "/v1/messages",
			`{"model":"claude-haiku-4-5","max_tokens":1,"messages":[{"role":"user","content":[{"source":{"type":"url","url":"https://x/a.png"},"type":"image"}]}]}`, 1, imageTokensAnthropic, false},
		{"Gemini3Inline", "generativelanguage.googleapis.com", "/v1beta/models/gemini-3-pro-preview:generateContent",
			`{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"` + png + `"}}]}]}`, 1, imageTokensGemini3, false},
		{"Gemini25FileImage", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro:generateContent",
			`{"contents":[{"parts":[{"fileData":{"mimeType":"image/jpeg","fileUri":"gs://b/a.jpg"}}]}]}`, 1, 0, true},
		{"AnthropicPDFURL", "api.anthropic.com", "/v1/messages",
			`{"model":"claude-sonnet-4-5","max_tokens":1,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://x/a.pdf"}}]}]}`, 0, 0, true},
		{"OpenAIAudio", "api.openai.com", "/v1/chat/completions",
			`{"model":"gpt-4o-audio-preview","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"` + png + `","format":"mp3"}}]}]}`, 0, 0, true},
		{"GeminiVideo", "generativelanguage.googleapis.com", "/v1beta/models/gemini-3-pro-preview:generateContent",
			`{"contents":[{"parts":[{"fileData":{"mimeType":"video/mp4","fileUri":"gs://b/a.mp4"}}]}]}`, 0, 0, true},
		{"SelfHostedImage", "vllm.internal", "/v1/chat/completions",
			`{"model":"Qwen/Qwen2.5-VL-7B-Instruct","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}`, 1, 0, true},
	} {
		r := Parse(checkRequest("POST", c.host, c.path, c.body, nil), nil)
		require.NoError(t, r.BodyError, c.name)
		require.Equal(t, c.images, r.Images, c.name)
		require.Equal(t, c.external, r.ExternalInput, c.name)
		if !c.external {
			require.GreaterOrEqual(t, r.InputTokens, c.images*c.per, c.name)
			require.Less(t, r.InputTokens, c.images*c.per+400, "%s: the base64 is not counted as text", c.name)
		}
	}
}

// TestBound_TruncatedBody: whatever the cut, the bound of a truncated body (what arrived plus
// maxWeightPerByte per missing byte of its content-length) covers the real count of the whole
// text, and the request is marked unbounded-by-body (the missing part may hold media).
func TestBound_TruncatedBody(t *testing.T) {
	t.Parallel()
	b := loadBPE(t)
	rng := rand.New(rand.NewPCG(3, 4))
	texts := adversarialTexts()
	cuts := 0
	for _, name := range []string{"Yi", "NFKCLigature", "SquaredKatakana", "Zalgo", "RandomBytes", "Digits"} {
		s := texts[name][:min(len(texts[name]), 6000)]
		for _, esc := range []bool{false, true} {
			if esc && !utf8.ValidString(s) {
				continue
			}
			body := `{"model":"gpt-4o","messages":[{"role":"user","content":` + jsonString(s, esc) + `}]}`
			real := b.chatTokens([2]string{"user", s})
			for range 25 {
				cut := 1 + rng.IntN(len(body)-1)
				req := checkRequest("POST", "api.openai.com", "/v1/chat/completions", body[:cut],
					map[string]string{"content-length": strconv.Itoa(len(body)), "x-envoy-auth-partial-body": "true"})
				r := Parse(req, nil)
				require.True(t, r.Truncated)
				require.True(t, r.ExternalInput, "%s cut at %d", name, cut)
				require.GreaterOrEqual(t, r.InputTokens, real, "%s cut at %d of %d", name, cut, len(body))
				cuts++
			}
		}
	}
	require.Greater(t, cuts, 200)
}

// compactBound is the reference for what Parse counts for a text-only body: the body
// re-encoded as compact JSON by encoding/json, every byte outside strings one token, every
// string its quotes plus the weights of its characters; for each member its colon and
// comma, for each array element its comma.
func compactBound(t *testing.T, body string) int64 {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(body))
	d.UseNumber()
	var v any
	require.NoError(t, d.Decode(&v))
	var walk func(any) int64
	walk = func(v any) int64 {
		switch x := v.(type) {
		case string:
			return 2 + TextBound(x)
		case json.Number:
			return int64(len(x))
		case bool:
			if x {
				return 4
			}
			return 5
		case nil:
			return 4
		case []any:
			n := int64(2)
			for _, e := range x {
				n += 1 + walk(e)
			}
			return n
		case map[string]any:
			n := int64(2)
			for k, e := range x {
				n += 2 + TextBound(k) + 2 + walk(e)
			}
			return n
		}
		t.Fatalf("unexpected %T", v)
		return 0
	}
	return walk(v)
}

// fixtureBody returns the body of a fixture.
func fixtureBody(t *testing.T, name string) string {
	t.Helper()
	h := loadFixture(t, name).GetAttributes().GetRequest().GetHttp()
	if b := h.GetRawBody(); len(b) > 0 {
		return string(b)
	}
	return h.GetBody()
}

// TestBound_EnglishHolds measures (and logs) how much the bound exceeds o200k on ordinary
// English and code in a chat body, so operators know what holds to expect.
func TestBound_EnglishHolds(t *testing.T) {
	t.Parallel()
	b := loadBPE(t)
	for _, f := range []string{"english_prose.txt", "english_technical.md", "code_go.txt", "data_json.txt"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "tokens", f))
		require.NoError(t, err)
		s := string(raw)
		body := `{"model":"gpt-4o","messages":[{"role":"user","content":` + jsonString(s, false) + `}]}`
		r := Parse(checkRequest("POST", "api.openai.com", "/v1/chat/completions", body, nil), nil)
		real := b.chatTokens([2]string{"user", s})
		require.GreaterOrEqual(t, r.InputTokens, real)
		t.Logf("%-22s %6d bytes  o200k/cl100k %5d  bound %6d  bound/real %.2f", f, len(s), real, r.InputTokens, float64(r.InputTokens)/float64(real))
	}
}
