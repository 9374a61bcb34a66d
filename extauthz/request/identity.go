package request

import (
	"fmt"
	"math"
	"net/url"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget"
)

// Subjects derived here (workload, namespace, route, tag, and the kinds named in the Config
// mappings and budget_subject values) must pass budget.ParseSubject, purser's one subject
// validator; values that do not are recorded in Request.SubjectErrors, never truncated or
// repaired.

// subjects collects validated, deduplicated subjects and the rejections.
type subjects struct {
	list []string
	errs []error
}

// add validates kind:id built from a source described by from (for error messages).
func (s *subjects) add(kind, id, from string) {
	s.addSubject(kind+":"+id, from)
}

func (s *subjects) addSubject(subj, from string) {
	if _, err := budget.ParseSubject(subj); err != nil {
		s.errs = append(s.errs, fmt.Errorf("%s: %w", from, err))
		return
	}
	for _, have := range s.list {
		if have == subj {
			return
		}
	}
	s.list = append(s.list, subj)
}

// spiffeNamespace checks that id is a well-formed SPIFFE id (spiffe://<trust domain><path>,
// per the SPIFFE-ID specification) and returns the Kubernetes namespace when the path has
// the Istio form /ns/<namespace>/sa/<service account>.
func spiffeNamespace(id string) (ns string, ok bool) {
	const scheme = "spiffe://"
	if len(id) > 2048 || !strings.HasPrefix(id, scheme) {
		return "", false
	}
	rest := id[len(scheme):]
	td, p, _ := strings.Cut(rest, "/")
	if td == "" || len(td) > 255 {
		return "", false
	}
	for i := 0; i < len(td); i++ {
		b := td[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '.' || b == '-' || b == '_') {
			return "", false
		}
	}
	if len(rest) == len(td) { // no path
		return "", true
	}
	// p is the path without its leading "/": segments must be non-empty, not "." or "..",
	// of [A-Za-z0-9._-].
	var segs [5]string
	n := 0
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", false
		}
		for i := 0; i < len(seg); i++ {
			b := seg[i]
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '-' || b == '_') {
				return "", false
			}
		}
		if n < len(segs) {
			segs[n] = seg
		}
		n++
	}
	if n == 4 && segs[0] == "ns" && segs[2] == "sa" {
		return segs[1], true
	}
	return "", true
}

// jwtPayload finds the verified JWT payload in the request's dynamic metadata.
func jwtPayload(md *corev3.Metadata, c *JWTConfig) *structpb.Struct {
	ns := c.Namespace
	if ns == "" {
		ns = DefaultJWTNamespace
	}
	st := md.GetFilterMetadata()[ns]
	if st == nil {
		return nil
	}
	if c.PayloadKey != "" {
		return st.GetFields()[c.PayloadKey].GetStructValue()
	}
	if len(st.GetFields()) != 1 {
		return nil
	}
	for _, v := range st.GetFields() {
		return v.GetStructValue()
	}
	return nil
}

// claim looks a claim up by exact name, then as a dot-separated path.
func claim(payload *structpb.Struct, name string) *structpb.Value {
	if v, ok := payload.GetFields()[name]; ok {
		return v
	}
	if !strings.Contains(name, ".") {
		return nil
	}
	cur := payload
	var v *structpb.Value
	for part := range strings.SplitSeq(name, ".") {
		if cur == nil {
			return nil
		}
		v = cur.GetFields()[part]
		if v == nil {
			return nil
		}
		cur = v.GetStructValue()
	}
	return v
}

// claimSubjects adds the subjects of one claim mapping.
func (s *subjects) claimSubjects(payload *structpb.Struct, m ClaimMapping) {
	v := claim(payload, m.Claim)
	if v == nil {
		return
	}
	from := "jwt claim " + m.Claim
	if l := v.GetListValue(); l != nil {
		for _, e := range l.GetValues() {
			s.claimValue(e, m.Subject, from)
		}
		return
	}
	s.claimValue(v, m.Subject, from)
}

func (s *subjects) claimValue(v *structpb.Value, kind, from string) {
	switch x := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		s.add(kind, x.StringValue, from)
	case *structpb.Value_NumberValue:
		f := x.NumberValue
		if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			s.errs = append(s.errs, fmt.Errorf("%s: number %g is not an integer id", from, f))
			return
		}
		s.add(kind, itoa(int64(f)), from)
	default:
		s.errs = append(s.errs, fmt.Errorf("%s: value of type %T is not a string or integer", from, v.GetKind()))
	}
}

// credentials extracts API-key candidates in the configured order.
func credentials(h *headers, query string, sources []string) []Credential {
	var out []Credential
	for _, src := range sources {
		var c Credential
		switch {
		case src == SourceAuthorization:
			v := h.get(src)
			if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
				continue
			}
			c = Credential{Source: src, Header: src, Secret: strings.TrimSpace(v[7:])}
		case strings.HasPrefix(src, QuerySourcePrefix):
			c = Credential{Source: src, Secret: queryParam(query, src[len(QuerySourcePrefix):])}
		case src == "" || src[0] == ':':
			continue
		default:
			c = Credential{Source: src, Header: src, Secret: strings.TrimSpace(h.get(src))}
		}
		if c.Secret == "" {
			continue
		}
		if out == nil {
			out = make([]Credential, 0, 2)
		}
		out = append(out, c)
	}
	return out
}

// queryParam returns the unescaped value of the query parameter name; several occurrences
// are joined with "," like repeated headers, so that an ambiguous key never validates.
func queryParam(query, name string) string {
	if name == "" {
		return ""
	}
	var found string
	n := 0
	for part := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(part, "=")
		if uk, err := url.QueryUnescape(k); err != nil || uk != name {
			continue
		}
		uv, err := url.QueryUnescape(v)
		if err != nil {
			uv = v
		}
		if n == 0 {
			found = uv
		} else {
			found += "," + uv
		}
		n++
	}
	return found
}
