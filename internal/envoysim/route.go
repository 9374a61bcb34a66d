package envoysim

import (
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ext_authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
)

// routeInfo is the matched route and everything the filters read from it.
type routeInfo struct {
	vh    *routev3.VirtualHost
	r     *routev3.Route
	name  string
	route *routev3.RouteAction // nil for direct_response
	// ext_authz per-route: disabled, merged context_extensions, per-route body settings.
	authzDisabled     bool
	contextExtensions map[string]string
	body              *ext_authzv3.BufferSettings
	noBodyBuffering   bool
	// enabled lists the filters a route's FilterConfig switches on or off (filter name ->
	// enabled), for filters configured with disabled: true (HttpFilter.disabled).
	enabled     map[string]bool
	disabledDef map[string]bool
	timeout     time.Duration
}

// match finds the route for a request (reference 1.2: no route ⇒ no Check). Virtual hosts are
// matched on :authority as Envoy does (exact, then suffix and prefix wildcards, then "*");
// routes in order on the path without its query string ("path" and "safe_regex" matchers
// ignore the query; "prefix" sees it, as in Envoy).
func (c *Config) match(authority, fullPath string) *routeInfo {
	vh := c.virtualHost(authority)
	if vh == nil {
		return nil
	}
	pathOnly := fullPath
	if i := strings.IndexByte(pathOnly, '?'); i >= 0 {
		pathOnly = pathOnly[:i]
	}
	for _, r := range vh.GetRoutes() {
		m := r.GetMatch()
		caseSensitive := m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
		eq := func(a, b string) bool {
			if caseSensitive {
				return a == b
			}
			return strings.EqualFold(a, b)
		}
		ok := false
		switch {
		case m.GetPath() != "":
			ok = eq(pathOnly, m.GetPath())
		case m.GetSafeRegex() != nil:
			re := regexp.MustCompile(m.GetSafeRegex().GetRegex()) // compiled once at Load too
			ok = re.MatchString(pathOnly) && re.FindString(pathOnly) == pathOnly
		default:
			p := m.GetPrefix()
			ok = len(fullPath) >= len(p) && eq(fullPath[:len(p)], p)
		}
		if ok && queryMatches(m.GetQueryParameters(), fullPath) {
			return c.routeInfo(vh, r)
		}
	}
	return nil
}

func (c *Config) virtualHost(authority string) *routev3.VirtualHost {
	host := strings.ToLower(authority)
	hostNoPort := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		hostNoPort = h
	}
	var suffix, prefix, star *routev3.VirtualHost
	bestSuffix, bestPrefix := -1, -1
	for _, vh := range c.RouteConfig.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			switch {
			case d == host || d == hostNoPort:
				return vh
			case d == "*":
				if star == nil {
					star = vh
				}
			case strings.HasPrefix(d, "*") && strings.HasSuffix(hostNoPort, d[1:]) && len(d) > bestSuffix:
				suffix, bestSuffix = vh, len(d)
			case strings.HasSuffix(d, "*") && strings.HasPrefix(hostNoPort, d[:len(d)-1]) && len(d) > bestPrefix:
				prefix, bestPrefix = vh, len(d)
			}
		}
	}
	switch {
	case suffix != nil:
		return suffix
	case prefix != nil:
		return prefix
	}
	return star
}

func (c *Config) routeInfo(vh *routev3.VirtualHost, r *routev3.Route) *routeInfo {
	ri := &routeInfo{vh: vh, r: r, name: r.GetName(), route: r.GetRoute(), enabled: map[string]bool{}}
	if r.GetRoute() != nil {
		ri.timeout = routeTimeout(r)
	}
	// ExtAuthzPerRoute at every level: context_extensions merge (the more specific level wins
	// per key); disabled / check_settings of the most specific level decide (reference 1.4).
	for _, a := range perFilter(c.RouteConfig, vh, r, filterExtAuthz) {
		var pr ext_authzv3.ExtAuthzPerRoute
		if a.UnmarshalTo(&pr) != nil {
			continue
		}
		if pr.GetDisabled() {
			ri.authzDisabled = true
			continue
		}
		if cs := pr.GetCheckSettings(); cs != nil {
			ri.authzDisabled = false
			if ri.contextExtensions == nil {
				ri.contextExtensions = map[string]string{}
			}
			for k, v := range cs.GetContextExtensions() {
				ri.contextExtensions[k] = v
			}
			if cs.GetWithRequestBody() != nil {
				ri.body = cs.GetWithRequestBody()
			}
			ri.noBodyBuffering = cs.GetDisableRequestBodyBuffering()
		}
	}
	// envoy.config.route.v3.FilterConfig switches a filter configured with disabled: true on
	// for this route, or any filter off (disabled: true), the more specific level winning
	// (route based filter chain: source/common/http/filter_chain_helper.cc).
	for _, name := range c.filters {
		if name == filterExtAuthz {
			continue // ExtAuthzPerRoute above
		}
		for _, a := range perFilter(c.RouteConfig, vh, r, name) {
			var fc routev3.FilterConfig
			if a.UnmarshalTo(&fc) == nil {
				ri.enabled[name] = !fc.GetDisabled()
			}
		}
	}
	ri.disabledDef = c.disabledDef
	return ri
}

// filterOn reports whether a filter runs on this route: its route FilterConfig, else its
// HttpFilter.disabled.
func (ri *routeInfo) filterOn(name string, disabledByDefault bool) bool {
	if on, ok := ri.enabled[name]; ok {
		return on
	}
	return !disabledByDefault
}

// on reports whether the chain's filter name runs on this route.
func (ri *routeInfo) on(name string) bool {
	return name != "" && ri.filterOn(name, ri.disabledDef[name])
}

// queryMatches applies RouteMatch.query_parameters: every matcher must match the first value
// of its parameter (present_match: the parameter is there). Envoy parses the query with
// Http::Utility::QueryParamsMulti and matches the first value
// (source/common/router/config_utility.cc, QueryParameterMatcher::matches).
func queryMatches(ms []*routev3.QueryParameterMatcher, fullPath string) bool {
	if len(ms) == 0 {
		return true
	}
	_, q, _ := strings.Cut(fullPath, "?")
	q, _, _ = strings.Cut(q, "#")
	vals, _ := url.ParseQuery(q)
	for _, m := range ms {
		v, ok := vals[m.GetName()]
		if !ok {
			return false
		}
		if m.GetPresentMatch() {
			continue
		}
		sm := m.GetStringMatch()
		got, want := v[0], ""
		if sm.GetIgnoreCase() {
			got = strings.ToLower(got)
		}
		norm := func(s string) string {
			if sm.GetIgnoreCase() {
				return strings.ToLower(s)
			}
			return s
		}
		switch {
		case sm.GetExact() != "":
			want = norm(sm.GetExact())
			if got != want {
				return false
			}
		case sm.GetPrefix() != "":
			if !strings.HasPrefix(got, norm(sm.GetPrefix())) {
				return false
			}
		case sm.GetSuffix() != "":
			if !strings.HasSuffix(got, norm(sm.GetSuffix())) {
				return false
			}
		case sm.GetContains() != "":
			if !strings.Contains(got, norm(sm.GetContains())) {
				return false
			}
		}
	}
	return true
}
