package budget

import (
	"fmt"
	"strings"
)

// Glob is a validated pattern for model names and request paths: '*' matches any run of
// characters (slashes included), '?' any one character, '[abc]', '[a-z]' and '[!x]' a class;
// '\' escapes the next character. Matching is case-sensitive.
type Glob string

// ParseGlob validates a pattern.
func ParseGlob(p string) (Glob, error) {
	if p == "" {
		return "", fmt.Errorf("pattern is empty")
	}
	if len(p) > 512 {
		return "", fmt.Errorf("pattern %q is longer than 512 bytes", p)
	}
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			if i+1 >= len(p) {
				return "", fmt.Errorf("pattern %q ends with an escape", p)
			}
			i++
		case '[':
			end, err := classEnd(p, i)
			if err != nil {
				return "", err
			}
			i = end
		case ']':
			return "", fmt.Errorf("pattern %q: unmatched ']' at byte %d", p, i)
		}
	}
	return Glob(p), nil
}

// classEnd returns the index of the ']' closing the class opened at p[i].
func classEnd(p string, i int) (int, error) {
	j := i + 1
	if j < len(p) && p[j] == '!' {
		j++
	}
	if j < len(p) && p[j] == ']' { // a leading ']' is literal
		j++
	}
	for ; j < len(p); j++ {
		switch p[j] {
		case '\\':
			j++
		case ']':
			if j == i+1 {
				return 0, fmt.Errorf("pattern %q: empty class at byte %d", p, i)
			}
			return j, nil
		}
	}
	return 0, fmt.Errorf("pattern %q: unclosed '[' at byte %d", p, i)
}

// Match reports whether s matches the pattern.
func (g Glob) Match(s string) bool {
	p := string(g)
	if !strings.ContainsAny(p, `*?[\`) {
		return p == s
	}
	return match(p, s)
}

// match is an iterative wildcard matcher with single-star backtracking (linear in practice,
// never exponential).
func match(p, s string) bool {
	pi, si := 0, 0
	starP, starS := -1, 0
	for si < len(s) {
		if pi < len(p) {
			switch c := p[pi]; c {
			case '*':
				starP, starS = pi, si
				pi++
				continue
			case '?':
				pi++
				si++
				continue
			case '[':
				end, _ := classEnd(p, pi) // validated by ParseGlob
				if classMatch(p[pi+1:end], s[si]) {
					pi = end + 1
					si++
					continue
				}
			case '\\':
				if pi+1 < len(p) && p[pi+1] == s[si] {
					pi += 2
					si++
					continue
				}
			default:
				if c == s[si] {
					pi++
					si++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starS++
		si = starS
		pi = starP + 1
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

func classMatch(class string, c byte) bool {
	neg := false
	if strings.HasPrefix(class, "!") {
		neg = true
		class = class[1:]
	}
	found := false
	for i := 0; i < len(class); i++ {
		lo := class[i]
		if lo == '\\' && i+1 < len(class) {
			i++
			lo = class[i]
		}
		hi := lo
		if i+2 < len(class) && class[i+1] == '-' {
			hi = class[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			found = true
		}
	}
	return found != neg
}
