package request

import "unicode/utf8"

// The input bound.
//
// Every tokenizer purser's providers use is a byte-level BPE (OpenAI cl100k_base and
// o200k_base, Llama 3, Qwen, DeepSeek, Anthropic's published legacy tokenizer) or a
// SentencePiece model with byte fallback (Gemma and Gemini, Llama 2, Mistral). Both start
// from the UTF-8 bytes of the (normalised) text, or from its characters with every character
// outside the vocabulary broken into its bytes, and only ever merge: they never produce more
// tokens than the normalised text has UTF-8 bytes. docs/bounds.md gives the argument and its
// sources. Two things can make the normalised text longer than the text sent:
//
//   - Unicode normalisation. NFC and NFKC (Anthropic's published tokenizer applies NFKC, Qwen's
//     NFC, SentencePiece's default is NFKC) expand some characters: U+FDFA becomes 18
//     characters, 33 bytes. A character weighs the longest of its UTF-8 encoding, its NFC
//     and its NFKC forms (weights_table.go, generated from golang.org/x/text/unicode/norm).
//   - Characters the tables do not know (unassigned in Unicode 15.0) may gain a decomposition
//     in a later Unicode version a tokenizer uses: they weigh three times their length.
//
// An invalid UTF-8 byte weighs 3: a JSON decoder may replace it with U+FFFD (3 bytes); so does
// a lone surrogate escape. The largest weight per byte of input is maxWeightPerByte (U+FDFA:
// 33 for 3 bytes), which bounds text purser did not see (a truncated body).
const (
	invalidByteWeight = 3
	unassignedFactor  = 3
	// maxWeightPerByte is the largest weight of any character divided by its UTF-8 length
	// (TestWeightsTable checks it).
	maxWeightPerByte = 11
)

// weightRange gives the weight w to the code points lo..hi.
type weightRange struct {
	lo, hi rune
	w      uint8
}

// runeWeight is the bound on the tokens of one character whose UTF-8 encoding is size bytes
// (r == utf8.RuneError with size 1 for an invalid byte).
func runeWeight(r rune, size int) int64 {
	if r < utf8.RuneSelf {
		return 1
	}
	if r == utf8.RuneError && size <= 1 {
		return invalidByteWeight
	}
	switch weightBlocks[r>>7] {
	case '0':
		return int64(size)
	case '1':
		return unassignedFactor * int64(size)
	}
	lo, hi := 0, len(weightExceptions)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if weightExceptions[m].hi < r {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(weightExceptions) && weightExceptions[lo].lo <= r {
		return int64(weightExceptions[lo].w)
	}
	return int64(size)
}

// TextBound returns the bound on the number of tokens any supported tokenizer produces for
// s (UTF-8, invalid bytes allowed), without the per-string, per-message or per-request
// allowances Parse adds for a request body.
func TextBound(s string) int64 {
	var n int64
	for i := 0; i < len(s); {
		if s[i] < utf8.RuneSelf {
			n++
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		n += runeWeight(r, size)
		i += size
	}
	return n
}
