package request

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/purser-dev/purser/budget/pricing"
)

// RouteMetadataNamespace is the route_metadata_context.filter_metadata namespace read for
// route context (docs/architecture.md, "Route context").
const RouteMetadataNamespace = "purser"

// Route-context keys.
const (
	keyRoute         = "route"
	keyTags          = "tags"
	keyProvider      = "provider"
	keyFlavor        = "api_flavor"
	keyFailure       = "failure_policy"
	keyBudgetSubject = "budget_subject"
)

// routeContext merges context_extensions with the route metadata; route metadata wins.
func routeContext(a *authv3.AttributeContext) (RouteContext, error) {
	ext := a.GetContextExtensions()
	md := a.GetRouteMetadataContext().GetFilterMetadata()[RouteMetadataNamespace].GetFields()
	raw := ext
	if len(md) > 0 {
		raw = make(map[string]string, len(ext)+len(md))
		for k, v := range ext {
			raw[k] = v
		}
		for k, v := range md {
			if s, ok := structString(v); ok {
				raw[k] = s
			}
		}
	}
	rc := RouteContext{Raw: raw, FailurePolicy: FailureClosed}
	var errs []error
	rc.Route = strings.TrimSpace(raw[keyRoute])
	if tags := raw[keyTags]; tags != "" {
		for t := range strings.SplitSeq(tags, ",") {
			if t = strings.TrimSpace(t); t != "" {
				rc.Tags = append(rc.Tags, t)
			}
		}
	}
	if p, ok := raw[keyProvider]; ok {
		if p = strings.TrimSpace(p); validToken(p) {
			rc.Provider = p
		} else {
			errs = append(errs, fmt.Errorf("route context %s %q: want 1-64 characters of a-z 0-9 . _ -", keyProvider, p))
		}
	}
	if f, ok := raw[keyFlavor]; ok {
		if f = strings.TrimSpace(f); validToken(f) {
			rc.Flavor = pricing.Flavor(f)
			if _, known := flavorDialect(rc.Flavor, dialectNone); !known {
				errs = append(errs, fmt.Errorf("route context %s %q: unknown flavour, body read generically", keyFlavor, f))
			}
		} else {
			errs = append(errs, fmt.Errorf("route context %s %q: want 1-64 characters of a-z 0-9 . _ -", keyFlavor, f))
		}
	}
	if fp, ok := raw[keyFailure]; ok {
		switch strings.TrimSpace(fp) {
		case FailureClosed, "":
		case FailureOpen:
			rc.FailurePolicy = FailureOpen
		default:
			errs = append(errs, fmt.Errorf("route context %s %q: want %q or %q, using %q", keyFailure, fp, FailureClosed, FailureOpen, FailureClosed))
		}
	}
	rc.BudgetSubject = strings.TrimSpace(raw[keyBudgetSubject])
	return rc, errors.Join(errs...)
}

// structString renders a Struct value as a route-context string: strings as is, integral
// numbers without exponent, booleans as true/false, lists joined with ",". Objects and nulls
// are skipped.
func structString(v *structpb.Value) (string, bool) {
	switch x := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return x.StringValue, true
	case *structpb.Value_NumberValue:
		f := x.NumberValue
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return itoa(int64(f)), true
		}
		return strconv.FormatFloat(f, 'g', -1, 64), true
	case *structpb.Value_BoolValue:
		return strconv.FormatBool(x.BoolValue), true
	case *structpb.Value_ListValue:
		var b strings.Builder
		for i, e := range x.ListValue.GetValues() {
			s, ok := structString(e)
			if !ok {
				continue
			}
			if i > 0 && b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(s)
		}
		return b.String(), true
	}
	return "", false
}

// validToken accepts provider and flavour ids: 1-64 of a-z 0-9 . _ -.
func validToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-') {
			return false
		}
	}
	return true
}
