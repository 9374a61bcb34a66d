package envoysim

import (
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
)

// checkFilter accepts the access-log filter kinds local_reply_config mappers are evaluated
// with here: status_code_filter, response_flag_filter, and_filter, or_filter.
func checkFilter(f *accesslogv3.AccessLogFilter) error {
	switch {
	case f == nil:
		return nil
	case f.GetStatusCodeFilter() != nil, f.GetResponseFlagFilter() != nil:
		return nil
	case f.GetAndFilter() != nil:
		for _, x := range f.GetAndFilter().GetFilters() {
			if err := checkFilter(x); err != nil {
				return err
			}
		}
		return nil
	case f.GetOrFilter() != nil:
		for _, x := range f.GetOrFilter().GetFilters() {
			if err := checkFilter(x); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("access-log filter %T is not simulated", f.GetFilterSpecifier())
}

// mapperMatches evaluates a local_reply_config mapper's filter against the reply being sent
// (its status code and the stream's response flags so far).
func (st *stream) mapperMatches(f *accesslogv3.AccessLogFilter, code int) bool {
	switch {
	case f == nil:
		return true
	case f.GetStatusCodeFilter() != nil:
		cmp := f.GetStatusCodeFilter().GetComparison()
		v := int(cmp.GetValue().GetDefaultValue())
		switch cmp.GetOp() {
		case accesslogv3.ComparisonFilter_GE:
			return code >= v
		case accesslogv3.ComparisonFilter_LE:
			return code <= v
		default:
			return code == v
		}
	case f.GetResponseFlagFilter() != nil:
		names := flagNames(&st.flags)
		want := f.GetResponseFlagFilter().GetFlags()
		if len(want) == 0 {
			return len(names) > 0
		}
		for _, w := range want {
			for _, n := range names {
				if w == n {
					return true
				}
			}
		}
		return false
	case f.GetAndFilter() != nil:
		for _, x := range f.GetAndFilter().GetFilters() {
			if !st.mapperMatches(x, code) {
				return false
			}
		}
		return true
	case f.GetOrFilter() != nil:
		for _, x := range f.GetOrFilter().GetFilters() {
			if st.mapperMatches(x, code) {
				return true
			}
		}
		return false
	}
	return false
}
