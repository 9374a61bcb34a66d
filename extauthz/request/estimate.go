package request

import "unicode/utf8"

// Token estimation.
//
// The estimate must be an upper bound of what the provider's tokenizer will count, because the
// reservation taken before the request is forwarded must cover the real cost. Tokenizers are
// not available offline for every provider, so the estimate is a character-class model
// calibrated against OpenAI's cl100k_base and o200k_base BPE vocabularies (see
// estimate_test.go for the measurement and its figures). Costs are kept in units of 1/12 token
// so that fractional weights stay integer:
//
//   - ASCII letters: one token per started group of 4 letters in a run, plus a penalty for
//     every letter bigram that is rare inside the vocabularies' multi-letter tokens
//     (bigramLevels, derived from the vocabularies themselves) and one token per
//     lower-to-upper case change (o200k splits CamelCase), half a token for every third
//     consonant in a row (vowel-less fragments split) and half a token where letters and
//     digits meet (hex, base64, identifiers). Prose stays near 4 letters per token while random
//     strings pay about one token per 2 letters, as BPE does.
//   - ASCII digits: one token per started group of 3 (both vocabularies split numbers into
//     groups of at most 3 digits), plus 3/4 token when a space precedes the number (the space
//     is then its own token).
//   - ASCII punctuation and control characters: one token each.
//   - Spaces and tabs: 1/4 token each; a run of line breaks: one token.
//   - Other scripts: a fixed weight per character by Unicode block, from 3/4 token (Latin
//     accents, Cyrillic) to 3/2 tokens (CJK ideographs, Hangul, Indic, Thai, Hebrew, Greek,
//     Arabic) and 3 tokens for characters outside the BMP (emoji).
const (
	unit = 12 // cost units per token

	costLetterGroup = unit     // per started group of lettersPerGroup letters
	lettersPerGroup = 4        //
	costCaseChange  = unit     // lower-case letter followed by an upper-case letter
	costConsonants  = unit / 2 // every third consonant in a row (y counts as a vowel)
	costLetterDigit = unit / 2 // a letter run meeting a digit run, either way
	costDigitGroup  = unit     // per started group of 3 digits
	costSpaceDigits = 9        // a space right before a number
	costSpace       = 3        // space or tab
	costNewlines    = unit     // a run of \r / \n
	costPunct       = unit     // ASCII punctuation, symbol or control character
	costLatin       = 9        // U+0080..U+024F: Latin-1 supplement, Latin extended A/B
	costCyrillic    = 9        // U+0400..U+052F
	costGreek       = 18       // U+0370..U+03FF
	costOther2      = 18       // any other 2-byte UTF-8 character (Hebrew, Arabic, ...)
	costIdeograph   = 18       // CJK unified ideographs and compatibility ideographs
	costKana        = 15       // Hiragana, Katakana
	costHangul      = 18       // Hangul syllables
	costCJKPunct    = unit     // CJK symbols and punctuation, full-width forms
	costOther3      = 18       // any other 3-byte UTF-8 character (Indic, Thai, symbols, ...)
	costAstral      = 3 * unit // 4-byte UTF-8 characters (emoji, rare ideographs)
	costInvalidUTF8 = unit     // one invalid byte
)

// bigramLevels gives, for each pair of lower-case ASCII letters (row: first letter, column:
// second letter), how rare the pair is inside the alphabetic tokens of cl100k_base and
// o200k_base combined: '0' appears in at least 1000 tokens, '1' in 400-999, '2' in 100-399,
// '3' in fewer than 100. A rare pair nearly always forces a token boundary.
const bigramLevels = "" +
	"10002101020000202000001201" + // a
	"02230333023033033012033323" + // b
	"03120330030023023010033313" + // c
	"02210222033122033002022323" + // d
	"01000001021000101000101011" + // e
	"03330033033133033121133323" + // f
	"02330310033121033012033323" + // g
	"03330333033222033120132323" + // h
	"00000002211000002000203220" + // i
	"13330333232333133323133333" + // j
	"03330332032232133211132323" + // k
	"02200222032022023300023303" + // l
	"00330333033202003312033323" + // m
	"02000102021220023200013312" + // n
	"10001102121000003000000222" + // o
	"03220330033033003010033323" + // p
	"33333333333233333333033333" + // q
	"01000202031100013000012302" + // r
	"02020220031112002200022313" + // s
	"02120230033122023000022302" + // t
	"00010112032000203000222222" + // u
	"03330333033333033233233333" + // v
	"03330332033231133223333333" + // w
	"23232333133333313331333233" + // x
	"13221333233221113212333333" + // y
	"13330333133333233333233322" //   z

// bigramCost is the cost in units of each level of bigramLevels: 0, 1, 3, 8.
func bigramCost(level byte) int64 {
	return int64(0x08030100 >> (((level - '0') & 3) * 8) & 0xff)
}

// vowels has bit i set when 'a'+i is a vowel (a e i o u, and y).
const vowels = 1<<('a'-'a') | 1<<('e'-'a') | 1<<('i'-'a') | 1<<('o'-'a') | 1<<('u'-'a') | 1<<('y'-'a')

// character classes of the counter state machine.
const (
	clsNone uint8 = iota
	clsLetter
	clsDigit
	clsSpace
	clsNewline
	clsOther
)

// counter accumulates the estimated token cost of a text fed to it one character at a time.
// Its zero value is ready to use.
type counter struct {
	units      int64
	run        int64 // length of the current letter or digit run
	cls        uint8 // class of the previous character
	prev       byte  // previous letter, lower-cased, inside a letter run
	prevLower  bool  // previous letter was lower case
	consonants int64 // consonants in a row inside the current letter run
}

// ascii feeds one ASCII byte.
func (c *counter) ascii(b byte) {
	switch {
	case b|0x20 >= 'a' && b|0x20 <= 'z':
		c.letters([]byte{b}) // the letter rules live in one place
	case b >= '0' && b <= '9':
		if c.cls != clsDigit {
			switch c.cls {
			case clsSpace:
				c.units += costSpaceDigits
			case clsLetter:
				c.units += costLetterDigit
			}
			c.cls, c.run = clsDigit, 0
		}
		if c.run%3 == 0 {
			c.units += costDigitGroup
		}
		c.run++
	case b == ' ' || b == '\t':
		c.units += costSpace
		c.cls = clsSpace
	case b == '\n' || b == '\r':
		if c.cls != clsNewline {
			c.units += costNewlines
		}
		c.cls = clsNewline
	default:
		c.units += costPunct
		c.cls = clsOther
	}
}

// letters feeds the run of ASCII letters at the start of s and returns its length, keeping
// the state in registers for the run.
func (c *counter) letters(s []byte) int {
	units, run, prev, prevLower, cons := c.units, uint64(c.run), c.prev, c.prevLower, uint32(c.consonants)
	if c.cls != clsLetter {
		if c.cls == clsDigit {
			units += costLetterDigit
		}
		run, prev, cons = 0, 0, 0
	}
	i := 0
	for ; i < len(s); i++ {
		b := s[i]
		l := uint32(b|0x20) - 'a' // 0..25 for a letter
		if l >= 26 {
			break
		}
		lower := b&0x20 != 0
		if prev != 0 {
			units += bigramCost(bigramLevels[uint32(prev-'a')*26+l])
			if !lower && prevLower {
				units += costCaseChange
			}
		}
		if run%lettersPerGroup == 0 {
			units += costLetterGroup
		}
		run++
		if vowels>>l&1 != 0 {
			cons = 0
		} else if cons++; cons == 3 {
			units += costConsonants
			cons = 0
		}
		prev, prevLower = byte(l)+'a', lower
	}
	if i > 0 {
		c.units, c.run, c.prev, c.prevLower, c.consonants, c.cls = units, int64(run), prev, prevLower, int64(cons), clsLetter
	}
	return i
}

// rune feeds one non-ASCII character whose UTF-8 encoding is size bytes long
// (utf8.RuneError with size 1 is an invalid byte).
func (c *counter) rune(r rune, size int) {
	c.cls = clsOther
	switch {
	case r == utf8.RuneError && size <= 1:
		c.units += costInvalidUTF8
	case r < 0x250:
		c.units += costLatin
	case r >= 0x370 && r < 0x400:
		c.units += costGreek
	case r >= 0x400 && r < 0x530:
		c.units += costCyrillic
	case size == 2:
		c.units += costOther2
	case r >= 0x4e00 && r <= 0x9fff, r >= 0x3400 && r <= 0x4dbf, r >= 0xf900 && r <= 0xfaff:
		c.units += costIdeograph
	case r >= 0x3040 && r <= 0x30ff:
		c.units += costKana
	case r >= 0xac00 && r <= 0xd7af:
		c.units += costHangul
	case r >= 0x3000 && r <= 0x303f, r >= 0xff00 && r <= 0xffef:
		c.units += costCJKPunct
	case size == 3:
		c.units += costOther3
	default:
		c.units += costAstral
	}
}

// take returns the whole tokens accumulated since the last take (rounded up) and resets the
// counter.
func (c *counter) take() int64 {
	t := (c.units + unit - 1) / unit
	*c = counter{}
	return t
}

// EstimateText returns the estimated upper bound of the number of tokens of s, without any
// per-message or per-request overhead. It is the same estimate Parse applies to every text
// found in a request body.
func EstimateText(s string) int64 {
	var c counter
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			c.ascii(b)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		c.rune(r, size)
		i += size
	}
	return c.take()
}
